"""Files embedded in a .tflite after the flatbuffer (TFLite metadata's associated files).

The converter appends a zip with ``labels.txt`` and ``edgetl.json`` to every artifact, so a bare
``.tflite`` copied on its own still knows its class names, resize method and output meaning.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path


def embedded_files(model: bytes | str | Path) -> dict[str, bytes]:
    """``{name: bytes}`` of the appended zip; empty when the model carries none."""
    try:
        src = io.BytesIO(model) if isinstance(model, (bytes, bytearray)) else open(model, "rb")
        with src, zipfile.ZipFile(src) as z:
            return {n: z.read(n) for n in z.namelist()}
    except (zipfile.BadZipFile, OSError, KeyError):
        return {}


def embedded_info(model: bytes | str | Path) -> tuple[list[str] | None, dict]:
    """(labels, edgetl facts) from a model's embedded files; (None, {}) when absent."""
    files = embedded_files(model)
    labels = [ln for ln in files.get("labels.txt", b"").decode().splitlines() if ln] or None
    try:
        info = json.loads(files.get("edgetl.json", b"{}"))
    except ValueError:
        info = {}
    return labels, info
