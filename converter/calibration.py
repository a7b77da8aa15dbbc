"""int8 calibration data: real training images, stratified per class, never random noise."""
from __future__ import annotations

import numpy as np

from edge_runtime.image import load_image


def stratified_sample(paths: list[str], labels: np.ndarray, n: int, seed: int = 0) -> tuple[list[str], dict]:
    """Up to ``n`` paths, taken round-robin over classes in a seeded order (equal share per class)."""
    rng = np.random.default_rng(seed)
    by_class = {int(c): list(rng.permutation(np.nonzero(labels == c)[0])) for c in np.unique(labels)}
    chosen, per_class = [], {c: 0 for c in by_class}
    while len(chosen) < n and any(by_class.values()):
        for c, idx in by_class.items():
            if idx and len(chosen) < n:
                chosen.append(paths[idx.pop()])
                per_class[c] += 1
    return chosen, per_class


def representative_dataset(paths: list[str], size: int, method: str):
    """What TFLiteConverter calls: one float32 RGB 0..255 batch of 1 per calibration image,
    decoded and resized exactly as the device will do it."""
    def gen():
        from edge_runtime.log import Progress

        bar = Progress("calibrating", len(paths), unit="img")
        for p in paths:
            yield [load_image(p, size, method).astype(np.float32)[None]]
            bar.add()
        bar.finish()
    return gen
