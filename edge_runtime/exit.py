"""Ending a command without the interpreter's teardown of TensorFlow.

Once TensorFlow is imported, a normal interpreter exit spends 1.2-1.4 s (measured on the 2-core
box) destroying its modules and C++ singletons after the command's work is done and written: a
user waits for nothing. A command entry point therefore finishes with ``exit_now(code)``, which
keeps the interpreter's own exit order up to the teardown (non-daemon threads are waited for,
every ``atexit`` handler runs: MLflow's flush, temporary folders, logging), flushes the streams
and then ends the process at once with the command's exit status. Nothing a command writes
depends on teardown: every file is written and closed before its function returns
(``edge_runtime.atomic``). Without TensorFlow loaded the plain exit is already quick and is kept.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

HEAVY_MODULES = ("tensorflow",)


def status_of(code) -> int:
    """The exit status ``sys.exit(code)`` would give (None -> 0, an int as it is, anything else
    printed to stderr -> 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code=None) -> None:
    """Exit with ``code`` (as ``sys.exit`` takes it); skip the interpreter's teardown when a heavy
    native library is loaded, after running the atexit handlers and flushing the streams."""
    if not any(m in sys.modules for m in HEAVY_MODULES):
        sys.exit(code)
    status = status_of(code)
    # the interpreter's own exit order, less the teardown: wait for non-daemon threads (and let
    # thread pools finish), then the atexit handlers
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more can reach it anyway
            pass
    os._exit(status)


def run_command(group) -> None:
    """Run a click command or group as a program's entry point (click's standalone mode always
    ends in SystemExit), ending with ``exit_now``."""
    try:
        group.main(standalone_mode=True)
    except SystemExit as e:
        exit_now(e.code)
