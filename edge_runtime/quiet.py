"""Quiet native logs: what TensorFlow, XLA and LiteRT write straight to file descriptor 2.

Their C++ logging bypasses Python (`I0000 ... cudart_stub.cc] Could not find cuda drivers`,
`failed call to cuInit`, the MLIR converter's dozens of lines, LiteRT's `INFO: Created
TensorFlow Lite XNNPACK delegate`), so the only way to keep a user's terminal clean is to point
fd 2 elsewhere while the noisy step runs. The commands turn this on (`enable()`); a library user
or a server keeps everything. What was held back is replayed if the step fails, so an error is
never hidden; `--verbose` (or EDGETL_VERBOSE=1) shows it all.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import threading

_enabled = False
_set_level = False
_lock = threading.RLock()
_depth = 0
_terminal = None   # Python's stderr while fd 2 is held back: never closed (see _terminal_stream)
NOISY_MODULES = ("tensorflow", "jax")


def verbose() -> bool:
    return os.environ.get("EDGETL_VERBOSE", "") not in ("", "0")


def enable() -> None:
    """Quiet native logs for the rest of this process (a command's entry point calls this)."""
    global _enabled, _set_level
    if verbose() or _enabled:
        return
    _enabled = True
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):            # C++ INFO/WARNING/ERROR after absl init
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        _set_level = True
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    # TensorFlow's Python-side warnings (e.g. "triggered tf.function retracing") likewise; errors stay
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def show_all() -> None:
    """--verbose: every native log line from here on (what `enable()` set is taken back)."""
    os.environ["EDGETL_VERBOSE"] = "1"
    if _set_level:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    logging.getLogger("tensorflow").setLevel(logging.NOTSET)


@contextlib.contextmanager
def native_stderr(replay: bool = True, held_on_error: list | None = None):
    """Hold back what native code writes to fd 2 inside the block (when enabled). Python's own
    ``sys.stderr`` keeps going to the terminal meanwhile (progress and messages stay visible).
    On an error the held text is replayed, unless ``replay`` is False because the caller turns
    the error into its own one-line message; ``held_on_error`` (a list) then receives the held
    text, for a log file. Nested blocks share the outermost one."""
    global _depth
    if not _enabled or verbose():
        yield
        return
    with _lock:
        _depth += 1
        try:
            if _depth > 1:
                yield
                return
            with tempfile.TemporaryFile() as held:
                sys.stderr.flush()
                saved = os.dup(2)
                python_stderr = sys.stderr
                if _writes_to_fd2(python_stderr):   # else it already goes elsewhere: leave it
                    sys.stderr = _terminal_stream(saved)
                os.dup2(held.fileno(), 2)
                failed = False
                try:
                    yield
                except BaseException:
                    failed = True
                    raise
                finally:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    os.close(saved)
                    sys.stderr = python_stderr
                    if failed:
                        held.seek(0)
                        text = held.read().decode("utf-8", "replace")
                        if held_on_error is not None:
                            held_on_error.append(text)
                        if replay:
                            sys.stderr.write(text)
                            sys.stderr.flush()
        finally:
            _depth -= 1


def _writes_to_fd2(stream) -> bool:
    """Whether Python's ``stream`` writes to file descriptor 2 (a terminal or a redirect of the
    process), rather than somewhere of its own (a host application's or a test runner's buffer)."""
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _terminal_stream(fd: int):
    """A text stream to the file ``fd`` (fd 2 before it is held back) refers to, kept open for the
    life of the process: a logging handler created inside a quiet block (TensorFlow's logger makes
    its handler on first use) keeps it as its stream and writes there after the block ends; a
    stream closed with the block made each such later warning a "Logging error" traceback. The
    stream is made again (the old one left open) only if fd 2 has since been pointed elsewhere."""
    global _terminal
    if _terminal is None or not os.path.sameopenfile(_terminal.fileno(), fd):
        _terminal = os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
    return _terminal


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of TensorFlow / JAX inside `native_stderr()` (their shared libraries
    log before any setting can reach them)."""

    def find_spec(self, name, path=None, target=None):
        if name not in NOISY_MODULES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module, run=run):
                with native_stderr():
                    run(module)
            spec.loader.exec_module = exec_module
        return spec
