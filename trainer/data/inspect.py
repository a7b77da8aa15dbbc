"""`edgetl data inspect`: what is in a dataset folder, before any training time is spent."""
from __future__ import annotations

import numpy as np

from .duplicates import DEFAULT_MAX_DISTANCE, find_groups
from .scan import Dataset


def inspect_dataset(ds: Dataset, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict:
    counts = ds.counts()
    nonzero = [n for n in counts.values() if n]
    groups = find_groups([r.dhash for r in ds.images], max_distance) if ds.images and \
        ds.images[0].dhash is not None else []
    sizes = np.array([(r.width, r.height) for r in ds.images]) if ds.images else np.zeros((0, 2))
    modes: dict[str, int] = {}
    for r in ds.images:
        modes[r.mode] = modes.get(r.mode, 0) + 1
    dup = []
    for g in groups:
        dup.append({"kinds": g.kinds(ds.images),
                    "files": [ds.images[i].rel for i in g.members],
                    "classes": sorted({ds.images[i].label for i in g.members})})
    report = {
        "root": str(ds.root),
        "layout": "pre-split" if ds.presplit else "folder-per-class",
        "classes": ds.classes,
        "counts": counts,
        "images": len(ds.images),
        "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
        "bad_files": [{"file": r.rel, "reason": r.error} for r in ds.bad],
        "ignored_files": ds.ignored,
        "duplicate_groups": dup,
        "duplicates_summary": {k: sum(1 for d in dup if k in d["kinds"])
                               for k in ("within-class", "cross-class", "cross-split")},
        "image_size": _size_summary(sizes),
        "modes": modes,
    }
    if ds.presplit:
        report["split_counts"] = {s: sum(1 for r in ds.images if r.given_split == s)
                                  for s in ("train", "val", "test")}
    return report


def _size_summary(sizes: np.ndarray) -> dict:
    if not len(sizes):
        return {}
    w, h = sizes[:, 0], sizes[:, 1]
    return {"width": {"min": int(w.min()), "median": int(np.median(w)), "max": int(w.max())},
            "height": {"min": int(h.min()), "median": int(np.median(h)), "max": int(h.max())}}


def format_report(rep: dict) -> str:
    lines = [f"{rep['root']}  ({rep['layout']}, {len(rep['classes'])} classes, {rep['images']} images)"]
    width = max((len(c) for c in rep["classes"]), default=5)
    top = max(rep["counts"].values(), default=0) or 1
    for c, n in rep["counts"].items():
        lines.append(f"  {c:<{width}}  {n:6d}  {'#' * int(round(30 * n / top))}")
    if rep.get("imbalance_ratio"):
        lines.append(f"imbalance ratio (largest/smallest class): {rep['imbalance_ratio']:.2f}")
    if rep.get("split_counts"):
        lines.append("given splits: " + ", ".join(f"{k} {v}" for k, v in rep["split_counts"].items()))
    sz = rep["image_size"]
    if sz:
        lines.append(f"image size: width {sz['width']['min']}-{sz['width']['max']} (median {sz['width']['median']}), "
                     f"height {sz['height']['min']}-{sz['height']['max']} (median {sz['height']['median']}); "
                     "modes " + ", ".join(f"{m} {n}" for m, n in sorted(rep["modes"].items())))
    lines.append(f"bad files skipped: {len(rep['bad_files'])}")
    for b in rep["bad_files"]:
        lines.append(f"  {b['file']}: {b['reason']}")
    if rep["ignored_files"]:
        lines.append(f"non-image files ignored: {len(rep['ignored_files'])} (e.g. {rep['ignored_files'][0]})")
    s = rep["duplicates_summary"]
    lines.append(f"near-duplicate groups: {len(rep['duplicate_groups'])} "
                 f"(within one class {s['within-class']}, across classes {s['cross-class']}, "
                 f"across given splits {s['cross-split']})")
    for d in rep["duplicate_groups"][:50]:
        lines.append(f"  [{', '.join(d['kinds'])}] " + "  ".join(d["files"]))
    if len(rep["duplicate_groups"]) > 50:
        lines.append(f"  ... {len(rep['duplicate_groups']) - 50} more (use --json for all)")
    return "\n".join(lines)
