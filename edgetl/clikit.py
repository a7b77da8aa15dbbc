"""What every edgetl command shares: one-line errors and a progress counter."""
from __future__ import annotations

import functools
import sys

import click

from edge_runtime.errors import UserError


def friendly(fn):
    """Turn UserError into one line on stderr and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
    return wrapper


def progress_counter(label):
    """A one-line counter on an interactive terminal; silent in logs and pipes."""
    if not sys.stderr.isatty():
        return None

    def cb(done, total):
        click.echo(f"\r{label}: {done}/{total}", nl=done == total, err=True)
    return cb
