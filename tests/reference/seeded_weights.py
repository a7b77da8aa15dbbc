"""Seeded random weights in a checkpoint's own key layout, from numpy alone: the reference script
(run once beside timm) and the parity test (run without torch) build the very same arrays."""
from __future__ import annotations

import zlib

import numpy as np


def seeded_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """One array per key, drawn from a generator seeded by (seed, the key's crc32): convolution and
    linear weights ~ N(0, 1/fan_in), batch-norm scales and variances in [0.5, 1.5], shifts and
    means ~ N(0, 0.1), so activations keep their scale through a deep network."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if key.endswith(("running_var",)) or (key.endswith(".weight") and len(shape) == 1):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith((".bias", "running_mean")):
            a = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            a = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        out[key] = a.astype(np.float32)
    return out


def seeded_input(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A normalised input batch, NHWC (the parity test's layout; the script transposes it)."""
    return np.random.default_rng([seed, size]).normal(0.0, 1.0, (batch, size, size, 3)).astype(np.float32)
