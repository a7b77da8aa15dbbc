"""Find a dataset's images, check every file, and describe what was found.

Layouts: folder-per-class (`DATA/<class>/*.jpg`) and pre-split (`DATA/{train,val,test}/<class>/`,
`validation` accepted as `val`); `tfds:<name>` is materialised into folder-per-class first.
Each file is decoded once here; bad files are kept aside with the reason instead of crashing a
later stage, and the perceptual hash for duplicate search comes from the same decode.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.image import ImageError, is_image_file, open_image

from .errors import DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val",
                 "valid": "val", "test": "test", "testing": "test"}
HASH_SIZE = 16  # dhash 16 -> 256 bits, as the issue asks


@dataclass
class ImageRecord:
    rel: str                 # path relative to the dataset root
    label: str               # class name
    given_split: str | None  # 'train' / 'val' / 'test' for pre-split layouts
    width: int = 0
    height: int = 0
    mode: str = ""
    dhash: np.ndarray | None = None  # packed bits (uint8[32])
    error: str | None = None


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    images: list[ImageRecord]                     # decodable images
    bad: list[ImageRecord] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files without an image extension
    presplit: bool = False

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in self.classes}
        for r in self.images:
            c[r.label] += 1
        return c

    def path(self, rec: ImageRecord) -> Path:
        return self.root / rec.rel

    def require_trainable(self, min_per_class: int = 3) -> None:
        """Refuse data that cannot train a classifier, naming the folder to fix."""
        if not self.images:
            raise DataError(f"{self.root}: no readable images found; expected DATA/<class>/*.jpg")
        if len(self.classes) < 2:
            raise DataError(f"{self.root}: only one class ({self.classes[0]!r}); a classifier needs "
                            "at least two class folders")
        for name, n in self.counts().items():
            if n < min_per_class:
                raise DataError(f"{self.root / name}: class {name!r} has {n} usable image(s); "
                                f"each class needs at least {min_per_class} (add photos or remove the folder)")


def _visible_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def _files_under(d: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


UNLISTABLE = {"\t": "a TAB", "\n": "a line break", "\r": "a carriage return"}


def _check_listable(path: Path, what: str) -> None:
    """Split lists are `path<TAB>class` lines and labels.txt has a class per line, so a name with
    a TAB or a line break would be cut in two there; refuse it before anything is written."""
    for ch, name in UNLISTABLE.items():
        if ch in path.name:
            raise DataError(f"{path}: {what} name contains {name} ({path.name!r}); rename it without one")
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:   # bytes that are not UTF-8 (a name from another system's encoding)
        raise DataError(f"{path.parent / ascii(path.name)}: {what} name is not valid UTF-8, which the run's "
                        "file lists are; rename it (e.g. convmv -f latin1 -t utf8)") from None


def discover(root: Path) -> tuple[list[ImageRecord], list[str], list[str], bool]:
    """(records without pixel checks, classes, ignored files, presplit) for a folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder; pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder with one sub-folder per class")
    dirs = _visible_dirs(root)
    loose = [f for f in root.iterdir() if f.is_file() and is_image_file(f)]
    split_dirs = {d.name: d for d in dirs if d.name.lower() in SPLIT_ALIASES}
    presplit = bool(split_dirs) and len(split_dirs) == len(dirs)
    if presplit and not any(SPLIT_ALIASES[n.lower()] == "train" for n in split_dirs):
        raise DataError(f"{root}: split folders {sorted(split_dirs)} but no 'train'; "
                        "a pre-split dataset needs DATA/train/<class>/")
    if not dirs:
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataError(f"{root}: no class folders{hint}; expected DATA/<class>/*.jpg, e.g. DATA/cats/1.jpg")
    if loose:
        raise DataError(f"{root}: {len(loose)} images lie outside any class folder (e.g. {loose[0].name}); "
                        "move each into DATA/<class>/")
    records, ignored, classes = [], [], set()
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in dirs] if presplit else [(None, root)]
    for split, base in groups:
        class_dirs = _visible_dirs(base) if presplit else dirs
        if presplit and not class_dirs:
            raise DataError(f"{base}: no class folders; expected {base}/<class>/*.jpg")
        for cdir in class_dirs:
            _check_listable(cdir, "class folder")
            classes.add(cdir.name)
            for f in _files_under(cdir):
                rel = f.relative_to(root).as_posix()
                if is_image_file(f):
                    _check_listable(f, "photo")
                    records.append(ImageRecord(rel=rel, label=cdir.name, given_split=split))
                else:
                    ignored.append(rel)
    return records, sorted(classes), ignored, presplit


def _check(root: Path, rec: ImageRecord, with_hash: bool) -> ImageRecord:
    try:
        img = open_image(root / rec.rel)
    except ImageError as e:
        rec.error = e.reason
        return rec
    rec.width, rec.height = img.size
    rec.mode = img.mode
    if with_hash:
        rec.dhash = dhash_bits(img)
    return rec


def dhash_bits(img) -> np.ndarray:
    """imagehash's difference hash (hash_size 16) as 32 packed bytes."""
    import imagehash  # training-side dependency

    return np.packbits(imagehash.dhash(img, hash_size=HASH_SIZE).hash.ravel())


def load_dataset(source: str | os.PathLike, *, check: bool = True, hashes: bool = True,
                 workers: int | None = None, progress=None) -> Dataset:
    """Discover and check a dataset. ``source`` is a folder or ``tfds:<name>``.

    ``check`` decodes every file (needed to skip bad ones; costs ~1-3 ms per photo);
    ``progress(done, total)`` is called as files are checked.
    """
    source = str(source)
    if source.startswith("tfds:"):
        from .tfds_source import materialize
        root = materialize(source[len("tfds:"):])
    else:
        root = Path(source).expanduser()
    records, classes, ignored, presplit = discover(root)
    root = root.resolve()
    if check:
        workers = workers or min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            done = []
            for i, r in enumerate(pool.map(lambda r: _check(root, r, hashes), records), 1):
                done.append(r)
                if progress and (i % 200 == 0 or i == len(records)):
                    progress(i, len(records))
        records = done
    good = [r for r in records if r.error is None]
    bad = [r for r in records if r.error is not None]
    return Dataset(root=root, classes=classes, images=good, bad=bad, ignored=ignored, presplit=presplit)
