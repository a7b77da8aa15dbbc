"""Classifier = baked-in preprocessing + backbone + (dropout, dense) head + softmax.

The model takes RGB 0..255 (float32) at its input size and returns class probabilities, so the
converter and the device only resize. The same head layers are trained on cached features and
then sit on the backbone, so there is no weight copying between the two phases.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from .backbones import Backbone, preprocessing_layer


@dataclass
class Parts:
    model: object          # image -> probabilities
    features: object       # image -> pooled features
    head: object           # features -> logits
    base: object           # the backbone itself (for fine-tuning)
    feature_width: int


def build(spec: Backbone, size: int, alpha: float, weights: str, num_classes: int,
          dropout: float = 0.2, l2: float = 1e-4, *, taps: tuple[str, ...] | None = None) -> Parts:
    """``taps``: inner layers pooled beside the final features (default: the backbone's own,
    ``spec.taps``; ``()`` for the final features alone)."""
    import keras

    base = spec.build_base(size, alpha, weights)
    taps = spec.taps if taps is None else tuple(taps)
    if taps:
        base = with_taps(base, taps)
    pretrained = weights != "none"
    if not pretrained:
        # Keras' default BatchNorm momentum (0.99-0.999) leaves inference at chance after a
        # short run from random init (measured: 21 %, i.e. chance, on 5 classes); 0.9 lets the statistics catch up.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    base.trainable = False
    inp = keras.Input((size, size, 3), name="image")
    pre = preprocessing_layer(spec.preprocessing)
    x = pre(inp) if pre is not None else inp
    # Pretrained BatchNorm stays in inference mode, also when fine-tuning unfreezes it.
    feats = base(x, training=False) if pretrained else base(x)
    width = int(feats.shape[-1])
    features = keras.Model(inp, feats, name="features")
    head = make_head(width, num_classes, dropout, l2)
    probs = keras.layers.Softmax(name="probabilities", dtype="float32")(head(feats))
    model = keras.Model(inp, probs, name=f"edgetl_{spec.name.replace(':', '_').replace('/', '_')}")
    return Parts(model=model, features=features, head=head, base=base, feature_width=width)


def with_taps(base, taps: tuple[str, ...]):
    """The backbone whose one output is its final pooled features followed by the global average
    of each tap layer. It stays one nested model ending in one vector, so the whole model is still
    a chain (preprocessing, backbone, head, softmax) that the converter and insight read as before;
    its layers are the backbone's own (fine-tuning unfreezes them the same way)."""
    import keras

    pooled = [keras.layers.GlobalAveragePooling2D(name=f"tap_{t}")(base.get_layer(t).output) for t in taps]
    feats = keras.layers.Concatenate(name="tapped_features")([base.outputs[0], *pooled])
    return keras.Model(base.inputs, feats, name=f"{base.name}_tapped")


def make_head(width: int, num_classes: int, dropout: float, l2: float):
    """features -> logits: dropout + one dense layer (softmax is applied by the model)."""
    import keras

    return keras.Sequential([
        keras.Input((width,)),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(num_classes, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                           name="logits"),
    ], name="head")


def logits_layer(model):
    """The head's Dense layer in a whole model (as built, or loaded from model.keras), or None
    for a model that is not edgetl's (backbone + ``head`` + softmax)."""
    try:
        return model.get_layer("head").get_layer("logits")
    except (ValueError, AttributeError):
        return None


_BLOCK = re.compile(r"^(block_?\d+[a-z]?|expanded_conv(?:_\d+)?|stage\d+_block\d+|blocks?_\d+_\d+)")


def block_ids(base) -> list[str | None]:
    """Per layer of ``base``: the block it belongs to (None for stem/top layers)."""
    out = []
    for layer in base.layers:
        m = _BLOCK.match(layer.name)
        out.append(m.group(1) if m else None)
    return out


def unfreeze_top(base, n_blocks: int, train_bn: bool = False) -> int:
    """Make the last ``n_blocks`` blocks and every layer after them trainable; returns the count
    of trainable layers. Pretrained BatchNorm layers stay frozen (their statistics belong to
    ImageNet); from random init (``train_bn``) all of them learn, in every block."""
    import keras

    ids = block_ids(base)
    order = []
    for b in ids:
        if b is not None and b not in order:
            order.append(b)
    keep = set(order[-n_blocks:]) if n_blocks > 0 else set()
    first = next((i for i, b in enumerate(ids) if b in keep), len(ids)) if keep else len(ids)
    if not order:  # unknown naming: fall back to the last 20 % of layers
        first = int(len(ids) * 0.8)
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        # From random init every BatchNorm learns, also below the trained blocks: its statistics
        # start at mean 0 / variance 1, so frozen ones pass the random convolutions' scale on
        # unnormalised (MobileNetV3-Small's hard-swish shrank its features to ~1e-10).
        train = (is_bn and train_bn) or (i >= first and not is_bn)
        layer.trainable = train
        count += bool(train and layer.weights)
    return count


def training_precision(model) -> str:
    """The dtype policy the model's layers compute in: "float32", or e.g. "mixed_bfloat16" for a
    model built under a mixed-precision policy (the first non-float32 policy found)."""
    for layer in _all_layers(model):
        name = getattr(getattr(layer, "dtype_policy", None), "name", "float32")
        if name != "float32":
            return name
    return "float32"


def as_float32(model):
    """``model`` computing in float32 throughout: the same architecture re-instantiated under the
    float32 policy with the trained weights loaded into it. A model trained in mixed precision
    keeps float32 variables, so no value changes; the copy is checked weight by weight. Why:
    TFLite cannot convert bfloat16 ops, and a device runs float32 or int8 anyway, so every
    reader of a run (convert, eval, insight, compare) sees the float32 network. A float32 model
    is returned as it is."""
    import keras
    import numpy as np

    if training_precision(model) == "float32":
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    with _global_policy("float32"):
        clone = keras.saving.deserialize_keras_object(config)
    weights = [np.asarray(w, np.float32) for w in model.get_weights()]
    clone.set_weights(weights)
    copied = clone.get_weights()
    if len(copied) != len(weights) or any(a.shape != b.shape or not np.array_equal(a, b)
                                          for a, b in zip(copied, weights)):
        raise RuntimeError("float32 copy of a mixed-precision model does not hold its weights")
    if training_precision(clone) != "float32":
        raise RuntimeError(f"float32 copy still computes in {training_precision(clone)}")
    return clone


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _float32_config(node):
    """A serialized Keras object with every mixed dtype policy replaced by float32."""
    if isinstance(node, dict):
        if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(node.get("config"), dict):
            name = node["config"].get("name", "")
            if isinstance(name, str) and name.startswith("mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    if isinstance(node, str) and node.startswith("mixed_") and node in ("mixed_bfloat16", "mixed_float16"):
        return "float32"
    return node


@contextlib.contextmanager
def _global_policy(name: str):
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def weights_fingerprint(model) -> str:
    """A short hash of the model's weights (shapes and float32 values, in layer order): what binds
    a deploy folder's artifacts to the one network they were converted from. Retraining, even at
    the same size into the same run folder, changes it; saving or loading the same model does not."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        a = np.ascontiguousarray(np.asarray(w, np.float32))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
