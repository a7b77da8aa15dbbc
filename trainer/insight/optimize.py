"""Gradient ascent on the input image: the one loop behind `dream` and `filters`.

The image lives in the model's own input space (RGB 0..255). Each step moves it along the
gradient of an objective minus ``tv_weight`` x its total variation, normalised per image so the
step size is in pixels whatever the scale of the objective, after a random shift (``jitter``)
so the result does not depend on single-pixel alignments. Seeded: the start noise and the
shifts come from one generator, so the same seed gives the same image.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .subject import Subject, as_list, keras_tf


def total_variation(images: np.ndarray) -> np.ndarray:
    """Anisotropic total variation per image: mean absolute difference between neighbouring
    pixels (right and down), in 0..255 units. Smooth photos ~2-10, pixel noise ~30+."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    dx = np.abs(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(1, 2, 3))
    dy = np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2, 3))
    return dx + dy


def start_noise(rng: np.random.Generator, n: int, size: int, sigma: float = 8.0) -> np.ndarray:
    """Grey plus a little seeded noise: where ascent starts."""
    return np.clip(127.5 + rng.normal(0, sigma, (n, size, size, 3)), 0, 255).astype(np.float32)


def ascend(subject: Subject, layers: tuple[str, ...], objective: Callable, x0: np.ndarray, steps: int,
           rng: np.random.Generator, lr: float = 2.0, *, tv_weight: float = 0.0, jitter: int = 0,
           done: Callable[[np.ndarray], np.ndarray] | None = None,
           progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
    """Maximise ``objective(maps, logits) -> [N]`` (a TensorFlow expression over the probe's
    outputs for ``layers``) from ``x0``. ``done(rounded uint8 images) -> [N] bool`` may end the
    ascent early once every image is done. Returns (uint8 images, steps taken)."""
    keras, tf = keras_tf()
    probe = subject.probe(tuple(layers))
    tvw = tf.constant(float(tv_weight), tf.float32)

    @tf.function(reduce_retracing=True)
    def step(x, shift):
        with tf.GradientTape() as tape:
            tape.watch(x)
            xs = tf.roll(x, shift, axis=(1, 2))
            *maps, logits = as_list(probe(xs, training=False))
            gain = objective(maps, logits)
            tv = (tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]), axis=(1, 2, 3))
                  + tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]), axis=(1, 2, 3)))
            total = tf.reduce_sum(gain - tvw * tv)
        g = tape.gradient(total, x)
        g = g / (tf.math.reduce_std(g, axis=(1, 2, 3), keepdims=True) + 1e-8)
        return tf.clip_by_value(x + lr * g, 0.0, 255.0)

    x = tf.Variable(np.asarray(x0, np.float32))
    taken = 0
    for taken in range(1, steps + 1):
        shift = rng.integers(-jitter, jitter + 1, 2).astype(np.int32) if jitter else np.zeros(2, np.int32)
        x.assign(step(x, tf.constant(shift)))
        if progress:
            progress(taken, steps)
        if done is not None and bool(np.all(done(_rounded(x.numpy())))):
            if progress and taken < steps:
                progress(steps, steps)
            break
    return _rounded(x.numpy()), taken


def _rounded(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
