"""Deterministic, stratified, leakage-free train/val/test split, saved as file lists.

Same seed -> same lists. Each class is split on its own (stratified) and gets at least one image
in every split when it has three or more. Near-duplicate groups move as one unit, so no group
straddles two splits. Pre-split folders keep their split; when only train and val exist, val
becomes the held-out test split and a validation part is carved from train.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.atomic import write_json
from edge_runtime.filelist import read_file_list, write_file_list
from edge_runtime.manifest import sha256_file

from .duplicates import DuplicateGroup, find_groups
from .errors import DataError
from .scan import Dataset

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class Split:
    root: Path
    classes: list[str]
    parts: dict[str, list[tuple[str, str]]]  # split name -> [(relative path, class)]
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    method: str = "stratified"
    notes: list[str] = field(default_factory=list)
    fingerprints: dict | None = None  # {"data", "test"}: see content_fingerprints

    def __getitem__(self, name: str) -> list[tuple[str, str]]:
        return self.parts[name]

    def paths_labels(self, name: str) -> tuple[list[str], np.ndarray]:
        """Absolute paths and integer labels (index into ``classes``) of one split."""
        index = {c: i for i, c in enumerate(self.classes)}
        items = self.parts[name]
        return ([str(self.root / rel) for rel, _ in items],
                np.array([index[c] for _, c in items], dtype=np.int64))

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {c: sum(1 for _, l in self.parts[s] if l == c) for c in self.classes} for s in SPLITS}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            write_file_list(folder / f"{s}.tsv", self.root, self.parts[s])
        if self.fingerprints is None:
            self.fingerprints = content_fingerprints(self)
        meta = {"root": str(self.root), "classes": self.classes, "seed": self.seed,
                "fractions": list(self.fractions), "method": self.method,
                "counts": self.counts(), "notes": self.notes, "fingerprints": self.fingerprints}
        write_json(folder / "split.json", meta)

    @classmethod
    def load(cls, folder: Path, root: Path | None = None) -> "Split":
        from ..runs import rundir

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: no split folder; the run's split lists are missing (restore RUN/split/ "
                            "from a full copy of the run, or train again)")
        meta = rundir.read_json(folder / "split.json")
        base = Path(root) if root is not None else Path(meta["root"])
        parts = {}
        for s in SPLITS:
            parts[s] = [(Path(p).relative_to(base).as_posix(), c)
                        for p, c in read_file_list(folder / f"{s}.tsv", root=base)]
        return cls(root=base, classes=meta["classes"], parts=parts, seed=meta["seed"],
                   fractions=tuple(meta["fractions"]), method=meta["method"], notes=meta.get("notes", []),
                   fingerprints=meta.get("fingerprints"))

    @classmethod
    def of_run(cls, run: Path, data_root: Path | None = None) -> "Split":
        """The run's split, for work that reads its photos: ``data_root`` is where the data folder
        lives now (it may have moved since training); a folder that is gone is named with the fix."""
        from ..runs import rundir

        split = cls.load(Path(run) / rundir.SPLIT, root=data_root)
        if not split.root.is_dir():
            raise DataError(f"{split.root}: the data folder this run was split from is gone (moved or deleted); "
                            "put it back, or give its new place with --data-root DIR")
        split.check_test_photos()
        return split

    def check_test_photos(self) -> None:
        """Refuse test photos that are not the bytes the run recorded (a --data-root holding
        same-named but different photos, or photos edited since): scoring them would overwrite the
        run's own results with another data set's."""
        recorded = (self.fingerprints or {}).get("test")
        if not recorded:
            return          # runs from before fingerprints were recorded
        now = _digest(self.parts["test"], self.root)
        if now != recorded:
            raise DataError(f"{self.root}: its test photos are not the ones this run was split from (content "
                            f"fingerprint {now}, recorded {recorded}); point --data-root at the run's own data "
                            "folder, or score other photos with `edgetl eval RUN --data DIR` (a separate report)")


def content_fingerprints(split: Split) -> dict:
    """What makes two runs comparable. ``data`` hashes every image's path relative to the data
    root, class and bytes, whatever split it fell in (same photos, same labels); ``test`` does
    the same over the test split only (same held-out files). A moved or copied data folder keeps
    both. A file that cannot be read hashes as missing: the fingerprint then differs from a
    complete copy, which is the truth (that run saw other data)."""
    shas = {rel: _file_sha(split.root / rel) for s in SPLITS for rel, _ in split.parts[s]}
    return {"data": _digest([e for s in SPLITS for e in split.parts[s]], split.root, shas),
            "test": _digest(split.parts["test"], split.root, shas)}


def _digest(entries, root: Path, shas: dict | None = None) -> str:
    h = hashlib.sha256()
    for rel, label in sorted(entries):
        sha = shas[rel] if shas is not None else _file_sha(root / rel)
        h.update(f"{rel}\t{label}\t{sha}\n".encode())
    return h.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return "missing"


def _units(indices: list[int], groups: list[DuplicateGroup]) -> list[list[int]]:
    """Near-duplicate groups become single units; everything else is its own unit."""
    wanted = set(indices)
    seen, units = set(), []
    for g in groups:
        members = [i for i in g.members if i in wanted]
        if len(members) > 1:
            units.append(members)
            seen.update(members)
    units.extend([i] for i in indices if i not in seen)
    return units


def _stratified(ds: Dataset, indices: list[int], fractions, seed: int,
                groups: list[DuplicateGroup]) -> dict[str, list[int]]:
    """Assign records to splits per class; fractions are (train, val, test) and may hold zeros."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[list[int]]] = {c: [] for c in ds.classes}
    for unit in _units(indices, groups):
        by_class[ds.images[unit[0]].label].append(unit)
    out = {s: [] for s in SPLITS}
    total = sum(fractions)
    for c in ds.classes:
        units = by_class[c]
        units.sort(key=lambda u: ds.images[u[0]].rel)  # order independent of discovery order
        order = rng.permutation(len(units))
        units = [units[i] for i in order]
        n = sum(len(u) for u in units)
        want = {}
        for s, f in zip(("test", "val"), (fractions[2], fractions[1])):
            k = int(round(n * f / total)) if f > 0 else 0
            want[s] = max(k, 1) if (f > 0 and n >= 3) else k
        it = iter(units)
        for s in ("test", "val"):
            got = 0
            while got < want[s]:
                u = next(it, None)
                if u is None:
                    break
                out[s].extend(u)
                got += len(u)
        for u in it:
            out["train"].extend(u)
    return out


def make_split(ds: Dataset, fractions=DEFAULT_FRACTIONS, seed: int = 0,
               groups: list[DuplicateGroup] | None = None) -> Split:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0:
        raise DataError(f"split fractions must be train,val,test >= 0 with train > 0, got {fractions}")
    if groups is None:
        hashes = [r.dhash for r in ds.images]
        groups = find_groups(hashes) if all(h is not None for h in hashes) else []
    notes = []
    idx_by_given = {s: [] for s in (*SPLITS, None)}
    for i, r in enumerate(ds.images):
        idx_by_given[r.given_split].append(i)
    if not ds.presplit:
        assign = _stratified(ds, idx_by_given[None], fractions, seed, groups)
        method = "stratified"
    else:
        given = {s: idx_by_given[s] for s in SPLITS}
        if not given["test"] and given["val"]:
            given["test"], given["val"] = given["val"], []
            notes.append("folder had train and val only: its val is the held-out test split")
        if not given["val"]:
            f_val = fractions[1] / (fractions[0] + fractions[1]) if fractions[1] > 0 else 0.1
            carved = _stratified(ds, given["train"], (1 - f_val, 0.0, f_val), seed, groups)
            given["train"], given["val"] = carved["train"], carved["test"]
            notes.append(f"validation carved from train ({f_val:.0%}, stratified, seed {seed})")
            method = "given+carved"
        else:
            method = "given"
        assign = given
        where = {i: s for s in SPLITS for i in assign[s]}
        leaks = [g for g in groups if len({where.get(i) for i in g.members}) > 1]
        if leaks:
            notes.append(f"{len(leaks)} near-duplicate group(s) straddle the given splits (leakage): "
                         + ", ".join(ds.images[g.members[0]].rel for g in leaks[:5]))
    parts = {s: sorted((ds.images[i].rel, ds.images[i].label) for i in assign[s]) for s in SPLITS}
    return Split(root=ds.root, classes=ds.classes, parts=parts, seed=seed, fractions=fractions,
                 method=method, notes=notes)

