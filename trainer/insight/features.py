"""Inside the backbone (the Udacity seed's visualisations): what chosen layers output for a photo
(edges -> textures -> parts), the first convolution's kernels as colour tiles, and for a deeper
layer the input pattern each filter responds to most."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import UserError

from .optimize import ascend, start_noise
from .subject import Subject, as_list, keras_tf


def pick_layers(subject: Subject, spec: str = "early,middle,late") -> list[str]:
    """``early,middle,late`` (stage outputs at the start, middle and end of the backbone) and/or
    layer names, comma-separated."""
    stages = subject.stage_outputs()
    if not stages:
        raise UserError(f"{subject.name}: the backbone has no spatial feature maps to look at")
    where = {"early": stages[0], "middle": stages[len(stages) // 2], "late": stages[-1]}
    out = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        name = where.get(word) or subject.check_layer(word)
        if name not in out:
            out.append(name)
    if not out:
        raise UserError("--layers is empty; give early,middle,late or layer names")
    return out


def to_unit_range(a: np.ndarray, axis) -> np.ndarray:
    """``a`` scaled to [0, 1] separately over ``axis`` (per channel, per kernel), so each shows."""
    lo = a.min(axis=axis, keepdims=True)
    hi = a.max(axis=axis, keepdims=True)
    return ((a - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)


@dataclass
class LayerMaps:
    layer: str
    maps: np.ndarray        # [h, w, k] the k most active channels, each scaled to [0, 1]
    channels: list[int]     # their channel numbers in the layer
    shape: tuple            # the layer's full output shape (h, w, channels)


def activations(subject: Subject, image, layers: str = "early,middle,late",
                per_layer: int = 16) -> tuple[np.ndarray, list[LayerMaps]]:
    """The photo at the model's size and, per chosen layer, its ``per_layer`` most active channels."""
    names = pick_layers(subject, layers)
    x = subject.load(image)
    *maps, _ = as_list(subject.probe(tuple(names))(x[None].astype(np.float32), training=False))
    out = []
    for name, m in zip(names, maps):
        m = np.asarray(m, np.float32)[0]
        order = np.argsort(-m.mean(axis=(0, 1)), kind="stable")[:per_layer]
        out.append(LayerMaps(name, to_unit_range(m[..., order], axis=(0, 1)),
                             [int(c) for c in order], tuple(m.shape)))
    return x, out


def first_conv_filters(subject: Subject) -> tuple[str, np.ndarray]:
    """(layer name, kernels as RGB tiles [n, kh, kw, 3] in [0, 1]) of the first convolution that
    reads the 3 colour channels; each kernel is scaled on its own so its colours show."""
    for layer in subject.backbone.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) == 4 and int(kernel.shape[2]) == 3:
            k = np.transpose(np.asarray(kernel, np.float32), (3, 0, 1, 2))
            return layer.name, to_unit_range(k, axis=(1, 2, 3))
    raise UserError(f"{subject.name}: no convolution reads the RGB input directly")


def pre_activation(subject: Subject, name: str) -> str:
    """The layer feeding an activation layer (ReLU, ReLU6, swish...), else ``name`` itself. A
    filter that is off everywhere at the start has zero gradient after its ReLU and could never
    be woken; before the ReLU the gradient always flows, and larger still means more active."""
    layer = subject.backbone.get_layer(name)
    if layer.__class__.__name__ not in ("ReLU", "Activation", "LeakyReLU", "ELU"):
        return name
    source = getattr(getattr(layer.input, "_keras_history", None), "operation", None)
    return source.name if source is not None and source.name in subject.spatial_layers() else name


def filter_patterns(subject: Subject, layer: str | None = None, n: int = 16, steps: int = 60, seed: int = 0,
                    tv_weight: float = 0.1, jitter: int = 2, *, progress=None) -> tuple[str, list[int], np.ndarray]:
    """For ``n`` filters of ``layer`` (default: the middle stage's output), the input image that
    maximises each filter's mean response, found by gradient ascent from seeded noise, all
    filters at once. An activation layer is read before its activation (see `pre_activation`).
    Returns (the layer optimised, filter numbers, uint8 images [n, S, S, 3])."""
    keras, tf = keras_tf()
    layer = pre_activation(subject, subject.check_layer(layer or pick_layers(subject, "middle")[0]))
    width = int(subject.probe((layer,)).outputs[0].shape[-1])
    if n < 1 or steps < 1:
        raise UserError("--n and --steps must be 1 or more")
    chosen = np.linspace(0, width - 1, min(n, width)).round().astype(int).tolist()
    onehot = tf.constant(np.eye(width, dtype=np.float32)[chosen])   # [n, channels]
    rng = np.random.default_rng(seed)

    def objective(maps, logits):
        return tf.reduce_sum(tf.reduce_mean(tf.cast(maps[0], tf.float32), axis=(1, 2)) * onehot, axis=-1)

    images, _ = ascend(subject, (layer,), objective, start_noise(rng, len(chosen), subject.size), steps, rng,
                       tv_weight=tv_weight, jitter=jitter, progress=progress)
    return layer, chosen, images
