"""The one place edgetl's own progress lines and warnings go: stderr, flushed, so they interleave
with results on stdout in the right order and never mix into piped output."""
from __future__ import annotations

import sys

_warned: set[str] = set()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def warn_once(msg: str) -> None:
    """``warning: msg`` the first time this process meets it (e.g. once per file, not per frame)."""
    if msg not in _warned:
        _warned.add(msg)
        log(f"warning: {msg}")
