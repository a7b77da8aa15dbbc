"""What the `edgetl` commands share beyond the common CLI kit (edge_runtime.clikit): the check that
a command's extra is installed, and a progress counter."""
from __future__ import annotations

import sys

import click

from edge_runtime.clikit import EXTRA_OF, friendly  # noqa: F401 - the commands' error policy
from edge_runtime.errors import UserError

# what training, converting and measuring need beyond the device install
TRAINING_MODULES = ("tensorflow", "keras", "scipy", "matplotlib", "imagehash")


def require_modules(command: str, modules=TRAINING_MODULES) -> None:
    """Refuse, before anything is written, a command whose extra is not installed (an [edge]-only
    install running `edgetl demo` would otherwise write its data folder and stop half-way, and the
    folder would then block the next run)."""
    import importlib.util

    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise UserError(f"`edgetl {command}` needs {m}, which this install lacks: "
                            f"pip install \"edgetl[{EXTRA_OF.get(m, 'train')}]\"")


def progress_counter(label):
    """A one-line counter on an interactive terminal; silent in logs and pipes."""
    if not sys.stderr.isatty():
        return None

    def cb(done, total):
        click.echo(f"\r{label}: {done}/{total}", nl=done == total, err=True)
    return cb
