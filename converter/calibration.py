"""int8 calibration data: real training images, stratified per class, never random noise."""
from __future__ import annotations

import numpy as np


def representative_dataset(images: np.ndarray):
    """What TFLiteConverter calls: one float32 RGB 0..255 batch of 1 per calibration image.
    ``images``: uint8 (N, S, S, 3), decoded and resized once as the device will do it
    (``trainer.data.pipeline.load_arrays``); the twin's and the shipped model's calibrations and the
    int8 head refit all read the same arrays. Each pass over them (int8 recovery calibrates the
    held-out twin and the shipped model) shows one progress line, numbered from the second on,
    finished when the last image is handed over (the converter does not ask past it)."""
    passes = [0]

    def gen():
        import time

        from edge_runtime.log import Progress, log

        passes[0] += 1
        label = "calibrating" if passes[0] == 1 else f"calibrating (pass {passes[0]})"
        bar, t0 = Progress(label, len(images), unit="img"), time.time()
        for i, img in enumerate(images, 1):
            bar.add()
            if i == len(images):   # the step's own summary line, as every long step ends
                bar.finish()
                log(f"{label}: {i} images in {time.time() - t0:.1f}s")
            yield [img.astype(np.float32)[None]]
    return gen
