"""manifest.json: the single contract between the converter and the device.

The converter writes it next to the .tflite files; the device reads labels, input size, dtype and
quantization, the resize method, output quantization and each artifact's sha256 from it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import UserError

FORMAT = "edgetl-manifest/1"
NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    file: str
    precision: str
    sha256: str
    bytes: int
    input: dict      # {"dtype", "scale", "zero_point"}
    output: dict     # {"dtype", "scale", "zero_point", "probabilities"}
    verification: dict
    extra: dict = field(default_factory=dict)   # fields this runtime does not use (e.g. metadata)

    @classmethod
    def from_dict(cls, a: dict) -> "Artifact":
        """Unknown keys go to ``extra``: an older device keeps reading a newer converter's manifest."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in a.items() if k in known},
                   extra={k: v for k, v in a.items() if k not in known})


@dataclass
class Manifest:
    folder: Path
    data: dict

    @property
    def labels(self) -> list[str]:
        return self.data["labels"]

    @property
    def size(self) -> int:
        return int(self.data["input"]["size"])

    @property
    def resize(self) -> str:
        return self.data["input"]["resize"]

    def artifact(self, precision: str | None = None) -> Artifact:
        """The named artifact, or the default one. An artifact that failed the converter's
        accuracy gate is used only when named explicitly (it is never the default)."""
        arts = self.data["artifacts"]
        explicit = precision is not None
        if precision is None:
            if "default" in self.data:
                precision = self.data["default"]
            else:   # a manifest from before defaults were written: the first that did not fail
                precision = next((a["precision"] for a in arts if not failed_verification(a)), None)
            if precision is None:
                failed = ", ".join(a["precision"] for a in arts if failed_verification(a))
                raise UserError(f"{self.folder / NAME}: no artifact passed verification ({failed} failed); "
                                "re-convert, or name one with --precision to use it anyway")
        for a in arts:
            if a["precision"] == precision:
                if failed_verification(a) and not explicit:
                    raise UserError(f"{self.folder / NAME}: the default {precision} artifact failed verification; "
                                    "re-convert, or name it with --precision to use it anyway")
                return Artifact.from_dict(a)
        raise UserError(f"{self.folder / NAME}: no {precision} artifact; this folder has "
                        f"{', '.join(a['precision'] for a in arts)}")


def failed_verification(artifact: dict) -> bool:
    return (artifact.get("verification") or {}).get("status") == "failed"


def load_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    p = folder / NAME
    if not p.exists():
        raise UserError(f"{p}: no manifest; pass the folder `edgetl convert` wrote (RUN/deploy)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise UserError(f"{p}: damaged manifest ({str(e)[:80] or type(e).__name__}); copy the deploy folder again") from None
    except OSError as e:
        raise UserError(f"{p}: cannot be read ({e.strerror}); copy the deploy folder again") from None
    problem = schema_problem(data)
    if problem:
        raise UserError(f"{p}: not a valid edgetl manifest ({problem}); copy the deploy folder again "
                        "or re-run edgetl convert")
    return Manifest(folder, data)


def schema_problem(data) -> str | None:
    """What is wrong with a parsed manifest's shape, or None: the fields this runtime relies on."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, expected an object"
    if data.get("format") != FORMAT:
        return f"unknown format {data.get('format')!r}, expected {FORMAT}"
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(l, str) and l for l in labels):
        return "'labels' must be a non-empty list of class names"
    inp = data.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("size"), int) or not isinstance(inp.get("resize"), str):
        return "'input' must give an integer 'size' and a 'resize' method"
    arts = data.get("artifacts")
    if not isinstance(arts, list) or not arts:
        return "'artifacts' must be a non-empty list"
    if isinstance(inp.get("size"), bool) or not 0 < inp["size"] <= 8192:
        return "'input.size' must be a side in pixels (1-8192)"
    for k, a in enumerate(arts):
        problem = _artifact_problem(a)
        if problem:
            return f"artifact {k} {problem}"
    if data.get("default") is not None and not isinstance(data.get("default"), str):
        return "'default' must be a precision name or null"
    return None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _artifact_problem(a) -> str | None:
    """What is wrong with one artifact entry, or None: every field the device reads."""
    if not isinstance(a, dict):
        return "is not an object"
    for key in ("file", "sha256", "precision"):
        if not isinstance(a.get(key), str) or not a.get(key):
            return f"has no {key!r}"
    f = a["file"]
    if f in (".", "..") or "/" in f or "\\" in f or "\0" in f:
        return f"has 'file' {f!r}, which must be a file name inside the deploy folder"
    if not isinstance(a.get("bytes"), int) or isinstance(a.get("bytes"), bool) or a["bytes"] < 0:
        return "has no 'bytes' (a file size)"
    for side in ("input", "output"):
        t = a.get(side)
        if not isinstance(t, dict) or not isinstance(t.get("dtype"), str) or not _number(t.get("scale")) \
                or not isinstance(t.get("zero_point"), int) or isinstance(t.get("zero_point"), bool):
            return f"has an {side!r} without 'dtype', 'scale' and 'zero_point'"
    if "probabilities" in a["output"] and not isinstance(a["output"]["probabilities"], bool):
        return "has an 'output.probabilities' that is not true or false"
    if not isinstance(a.get("verification"), dict):
        return "has no 'verification' object"
    return None
