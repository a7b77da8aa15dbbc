"""int8 calibration data: real training images, stratified per class, never random noise."""
from __future__ import annotations

import numpy as np

from edge_runtime.image import load_image


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
