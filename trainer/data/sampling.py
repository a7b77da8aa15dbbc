"""The one stratified sampler: calibration sets, CI data subsets and any other "a few photos of
each class" draw the same way, so a seed means the same thing everywhere."""
from __future__ import annotations

import numpy as np


def stratified_sample(paths: list, labels: np.ndarray, n: int | None = None, seed: int = 0,
                      per_class: int | None = None) -> tuple[list, dict[int, int]]:
    """Paths taken round-robin over the classes, each class in its own seeded random order, so
    every class gets an equal share while it has photos left. ``n`` caps the total, ``per_class``
    caps each class (give either or both). Returns the chosen paths and the count per class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = {int(c): list(rng.permutation(np.nonzero(labels == c)[0])) for c in np.unique(labels)}
    total = len(paths) if n is None else n
    cap = per_class if per_class is not None else len(paths)
    chosen, counts = [], {c: 0 for c in by_class}
    while len(chosen) < total and any(idx and counts[c] < cap for c, idx in by_class.items()):
        for c, idx in by_class.items():
            if idx and counts[c] < cap and len(chosen) < total:
                chosen.append(paths[idx.pop()])
                counts[c] += 1
    return chosen, counts
