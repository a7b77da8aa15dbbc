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


class Progress:
    """Progress of long work with rate and ETA: a rewritten line on an interactive terminal, a
    plain line at most every ``every`` seconds in logs and pipes (so a 10-minute step is never
    silent, and a log is not flooded)."""

    def __init__(self, label: str, total: int, done: int = 0, unit: str = "", every: float = 15.0):
        import time

        self.label, self.total, self.done, self.unit, self.every = label, total, done, unit, every
        self._t0, self._start, self._last = time.time(), done, time.time()
        self._tty = sys.stderr.isatty()

    def line(self) -> str:
        import time

        dt = time.time() - self._t0
        rate = (self.done - self._start) / dt if dt > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        unit = f" {self.unit}" if self.unit else ""
        tail = f", ETA {eta:.0f}s" if eta == eta and self.done < self.total else ""
        return f"{self.label}: {self.done}/{self.total}{unit} ({rate:.0f}{unit}/s{tail})"

    def add(self, k: int = 1) -> None:
        import time

        self.done += k
        now = time.time()
        if self._tty:
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)
        elif now - self._last >= self.every and self.done < self.total:
            self._last = now
            log(self.line())

    def finish(self) -> None:
        if self._tty:
            print("", file=sys.stderr, flush=True)

