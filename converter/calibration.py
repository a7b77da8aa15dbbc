"""int8 calibration data: real training images, stratified per class, never random noise."""
from __future__ import annotations

import numpy as np


def representative_dataset(images: np.ndarray):
    """What TFLiteConverter calls: one float32 RGB 0..255 batch of 1 per calibration image.
    ``images``: uint8 (N, S, S, 3), decoded and resized once as the device will do it
    (``trainer.data.pipeline.load_arrays``); the twin's and the shipped model's calibrations and the
    int8 head refit all read the same arrays."""
    def gen():
        from edge_runtime.log import Progress

        bar = Progress("calibrating", len(images), unit="img")
        for img in images:
            yield [img.astype(np.float32)[None]]
            bar.add()
        bar.finish()
    return gen
