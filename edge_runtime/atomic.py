"""Write a file so readers see the old content or the new, never half of it: write a hidden temp
file beside the target, then rename it over the target (atomic on one file system). The one
home for this in edgetl: every artifact, list, report, plot, cache and checkpoint goes through it."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yields a hidden temp path beside ``path`` whose name ends like ``path``'s (writers that
    choose a format by suffix, such as `np.save` or Keras, keep working); when the block
    succeeds the temp file replaces ``path``, when it fails it is removed and ``path`` is as it
    was. ``durable``: flush the bytes to disk before the rename (artifacts that must survive a
    power cut)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    with replacing(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj, default=None) -> None:
    write_text(path, json.dumps(obj, indent=2, default=default))
