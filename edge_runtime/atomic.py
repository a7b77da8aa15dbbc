"""Write a file so readers see the old content or the new, never half of it: write a hidden temp
file beside the target, then rename it over the target (atomic on one file system)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj, default=None) -> None:
    write_text(path, json.dumps(obj, indent=2, default=default))
