"""MobileNetV4 conv-small, conv-medium and conv-large in Keras 3, and a torch-free importer of
timm's published ImageNet checkpoints (Google released no Keras or TF checkpoints of it).

The blocks (arXiv 2404.10518): the stem conv; plain conv blocks (``cn``); the fused inverted
bottleneck (``er``: a k x k expansion conv, then a 1x1 projection); and the universal inverted
bottleneck (``uir``: an optional k x k depthwise conv before the 1x1 expansion (no activation),
an optional one after it, then the 1x1 projection), which covers the ExtraDW (both), inverted
residual (middle only), ConvNeXt-like (start only) and FFN (neither) shapes. A residual joins
whenever stride is 1 and the width is unchanged. The head pools first and then applies a 1x1
conv to 1280 with batch norm and ReLU. Every op is a conv, depthwise conv, pad, add or ReLU: the
int8 graph stays in one XNNPACK partition.

The numbers follow timm's PyTorch graph exactly: symmetric zero padding of (k - 1) // 2 (not
TensorFlow's SAME, which pads a strided conv on one side only), BatchNorm eps 1e-5, input
normalised with ImageNet's mean and std. The hybrid variants (multi-query attention blocks) are
not registered: see the guide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Backbone, BackboneError, assign, register

BN_EPS = 1e-5
HEAD = 1280

# One entry per block: ("cn", kernel, stride, out) | ("er", kernel, stride, expand, out) |
# ("uir", start dw kernel, mid dw kernel, stride, expand, out); a count repeats it (stride on the
# first only). Stages in timm's order, so block (i, j) is timm's ``blocks.i.j``.
ARCHS = {
    "small": (32, [
        [("cn", 3, 2, 32), ("cn", 1, 1, 32)],
        [("cn", 3, 2, 96), ("cn", 1, 1, 64)],
        [("uir", 5, 5, 2, 3, 96), (4, ("uir", 0, 3, 1, 2, 96)), ("uir", 3, 0, 1, 4, 96)],
        [("uir", 3, 3, 2, 6, 128), ("uir", 5, 5, 1, 4, 128), ("uir", 0, 5, 1, 4, 128), ("uir", 0, 5, 1, 3, 128),
         (2, ("uir", 0, 3, 1, 4, 128))],
        [("cn", 1, 1, 960)],
    ]),
    "medium": (32, [
        [("er", 3, 2, 4, 48)],
        [("uir", 3, 5, 2, 4, 80), ("uir", 3, 3, 1, 2, 80)],
        [("uir", 3, 5, 2, 6, 160), (2, ("uir", 3, 3, 1, 4, 160)), ("uir", 3, 5, 1, 4, 160),
         ("uir", 3, 3, 1, 4, 160), ("uir", 3, 0, 1, 4, 160), ("uir", 0, 0, 1, 2, 160), ("uir", 3, 0, 1, 4, 160)],
        [("uir", 5, 5, 2, 6, 256), ("uir", 5, 5, 1, 4, 256), (2, ("uir", 3, 5, 1, 4, 256)), ("uir", 0, 0, 1, 4, 256),
         ("uir", 3, 0, 1, 4, 256), ("uir", 3, 5, 1, 2, 256), ("uir", 5, 5, 1, 4, 256), (2, ("uir", 0, 0, 1, 4, 256)),
         ("uir", 5, 0, 1, 2, 256)],
        [("cn", 1, 1, 960)],
    ]),
    "large": (24, [
        [("er", 3, 2, 4, 48)],
        [("uir", 3, 5, 2, 4, 96), ("uir", 3, 3, 1, 4, 96)],
        [("uir", 3, 5, 2, 4, 192), (3, ("uir", 3, 3, 1, 4, 192)), ("uir", 3, 5, 1, 4, 192),
         (5, ("uir", 5, 3, 1, 4, 192)), ("uir", 3, 0, 1, 4, 192)],
        [(4, ("uir", 5, 5, 2, 4, 512)), ("uir", 5, 0, 1, 4, 512), ("uir", 5, 3, 1, 4, 512),
         (2, ("uir", 5, 0, 1, 4, 512)), ("uir", 5, 3, 1, 4, 512), ("uir", 5, 5, 1, 4, 512),
         (3, ("uir", 5, 0, 1, 4, 512))],
        [("cn", 1, 1, 960)],
    ]),
}
# timm's published ImageNet checkpoints: (model name on its hub, native input size)
CHECKPOINTS = {"small": ("mobilenetv4_conv_small.e2400_r224_in1k", 224),
               "medium": ("mobilenetv4_conv_medium.e500_r256_in1k", 256),
               "large": ("mobilenetv4_conv_large.e600_r384_in1k", 384)}
HUB = "https://huggingface.co/timm/{name}/resolve/main/model.safetensors"


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8, never down by more than 10 % (timm's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def blocks(variant: str) -> list[list[tuple]]:
    """The variant's stages with repeats written out, each block with its stride."""
    stages = []
    for stage in ARCHS[variant][1]:
        out = []
        for entry in stage:
            count, spec = (entry[0], entry[1]) if isinstance(entry[0], int) else (1, entry)
            for r in range(count):
                out.append(spec if r == 0 else _with_stride(spec, 1))
        stages.append(out)
    return stages


def _with_stride(spec: tuple, stride: int) -> tuple:
    kind = spec[0]
    i = {"cn": 2, "er": 2, "uir": 3}[kind]
    return spec[:i] + (stride,) + spec[i + 1:]


def mobilenet_v4(variant: str = "small", size: int = 224, include_top: bool = False, classes: int = 1000):
    """MobileNetV4-Conv ``variant`` on *normalised* input; features (1280) or logits with the top."""
    import keras
    from keras import layers

    if variant not in ARCHS:
        raise BackboneError(f"mobilenet_v4_conv_{variant}: no such variant; choose small, medium or large")

    def conv(x, filters, kernel, stride, name, depthwise=False):
        if kernel > 1:
            x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
        if depthwise:
            return layers.DepthwiseConv2D(kernel, stride, use_bias=False, name=name)(x)
        return layers.Conv2D(filters, kernel, stride, use_bias=False, name=name)(x)

    def bn(x, name, act=True):
        x = layers.BatchNormalization(epsilon=BN_EPS, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if act else x

    stem, _ = ARCHS[variant]
    inp = keras.Input((size, size, 3), name="normalised_image")
    x = bn(conv(inp, stem, 3, 2, "stem_conv"), "stem")
    for i, stage in enumerate(blocks(variant)):
        for j, spec in enumerate(stage):
            x = _block(x, spec, f"blocks_{i}_{j}", conv, bn)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
    x = bn(layers.Conv2D(HEAD, 1, use_bias=False, name="head_conv")(x), "head")
    x = layers.Flatten(name="features")(x)
    if include_top:
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inp, x, name=f"mobilenet_v4_conv_{variant}")


def _block(x, spec: tuple, name: str, conv, bn):
    from keras import layers

    width = int(x.shape[-1])
    shortcut = x
    if spec[0] == "cn":
        _, k, s, out = spec
        return bn(conv(x, out, k, s, f"{name}_conv"), f"{name}_conv")     # no residual on plain conv blocks
    if spec[0] == "er":
        _, k, s, e, out = spec
        x = bn(conv(x, make_divisible(width * e), k, s, f"{name}_exp"), f"{name}_exp")
        x = bn(conv(x, out, 1, 1, f"{name}_proj"), f"{name}_proj", act=False)
    else:
        _, start, mid, s, e, out = spec
        if start:   # no activation after the first depthwise conv
            x = bn(conv(x, width, start, 1 if mid else s, f"{name}_dw_start", depthwise=True), f"{name}_dw_start",
                   act=False)
        x = bn(conv(x, make_divisible(width * e), 1, 1, f"{name}_pw_exp"), f"{name}_pw_exp")
        if mid:
            x = bn(conv(x, None, mid, s, f"{name}_dw_mid", depthwise=True), f"{name}_dw_mid")
        x = bn(conv(x, out, 1, 1, f"{name}_pw_proj"), f"{name}_pw_proj", act=False)
    if spec[-3] == 1 and width == spec[-1]:   # stride 1, width unchanged
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return x


# --------------------------------------------------------------------------- timm's checkpoints
def _timm_prefix(layer: str) -> tuple[str, str] | None:
    """(timm module prefix, kind) of one of our layers with weights: kind conv | dw | bn | dense."""
    if layer == "stem_conv":
        return "conv_stem", "conv"
    if layer == "stem_bn":
        return "bn1", "bn"
    if layer == "head_conv":
        return "conv_head", "conv"
    if layer == "head_bn":
        return "norm_head", "bn"
    if layer == "predictions":
        return "classifier", "dense"
    if not layer.startswith("blocks_"):
        return None
    _, i, j, rest = layer.split("_", 3)
    base = f"blocks.{i}.{j}"
    return (base + BLOCK_NAMES[rest][0], BLOCK_NAMES[rest][1]) if rest in BLOCK_NAMES else None


# our layer name in a block -> (timm's module in that block, kind)
BLOCK_NAMES = {"conv": (".conv", "conv"), "conv_bn": (".bn1", "bn"),                        # cn
               "exp": (".conv_exp", "conv"), "exp_bn": (".bn1", "bn"),                      # er
               "proj": (".conv_pwl", "conv"), "proj_bn": (".bn2", "bn"),
               "dw_start": (".dw_start.conv", "dw"), "dw_start_bn": (".dw_start.bn", "bn"),  # uir
               "pw_exp": (".pw_exp.conv", "conv"), "pw_exp_bn": (".pw_exp.bn", "bn"),
               "dw_mid": (".dw_mid.conv", "dw"), "dw_mid_bn": (".dw_mid.bn", "bn"),
               "pw_proj": (".pw_proj.conv", "conv"), "pw_proj_bn": (".pw_proj.bn", "bn")}


def keras_arrays_from_timm(sd: dict[str, np.ndarray], model) -> dict[str, list[np.ndarray]]:
    """timm's state_dict (its key names) as the arrays of ``model``'s layers."""
    out = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        found = _timm_prefix(layer.name)
        if found is None:
            raise BackboneError(f"{model.name}: no checkpoint name for layer {layer.name}")
        prefix, kind = found
        try:
            if kind == "bn":
                out[layer.name] = [sd[prefix + s] for s in (".weight", ".bias", ".running_mean", ".running_var")]
            elif kind == "dense":
                out[layer.name] = [sd[prefix + ".weight"].T, sd[prefix + ".bias"]]
            elif kind == "dw":
                out[layer.name] = [sd[prefix + ".weight"].transpose(2, 3, 0, 1)]   # (C,1,kh,kw) -> (kh,kw,C,1)
            else:
                out[layer.name] = [sd[prefix + ".weight"].transpose(2, 3, 1, 0)]   # OIHW -> HWIO
        except KeyError as e:
            raise BackboneError(f"checkpoint has no {e.args[0]} (for {layer.name}): not a {model.name} checkpoint") from None
    return out


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """A timm checkpoint file: .safetensors (read here) or a PyTorch .pth/.bin (trainer.backbones.pth)."""
    if str(path).endswith(".safetensors"):
        from .safetensors import read_safetensors
        return read_safetensors(path)
    from .pth import read_state_dict
    return read_state_dict(path)


def imagenet_checkpoint(variant: str) -> Path:
    """timm's checkpoint, from the edgetl cache or fetched from its hub (online)."""
    from ..data.tfds_source import cache_root

    name, _ = CHECKPOINTS[variant]
    path = cache_root() / "weights" / f"{name}.safetensors"
    if path.is_file():
        return path
    url = HUB.format(name=name)
    try:
        import urllib.request

        from edge_runtime.atomic import replacing

        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as r, replacing(path) as tmp:
            Path(tmp).write_bytes(r.read())
    except OSError as e:
        raise BackboneError(f"mobilenet_v4_conv_{variant}: timm's ImageNet checkpoint could not be fetched "
                            f"({getattr(e, 'reason', e)}); download {url} and pass --weights PATH "
                            f"(or place it at {path}), or --weights none") from None
    return path


def load_weights(model, variant: str, weights: str | None) -> None:
    if weights in (None, "none"):
        return
    path = imagenet_checkpoint(variant) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise BackboneError(f"{path}: checkpoint not found (for --weights use 'imagenet', 'none' or a timm "
                            ".safetensors/.pth file)")
    arrays = keras_arrays_from_timm(read_checkpoint(path), model)
    if not any(layer.name == "predictions" for layer in model.layers):
        arrays.pop("predictions", None)
    assign(model, arrays, f"mobilenet_v4_conv_{variant} {path.name}")


def _builder(variant: str, top: bool):
    def build(size: int, alpha: float, weights: str):
        model = mobilenet_v4(variant, size, include_top=top)
        load_weights(model, variant, weights)
        return model
    return build


for _v, (_hub, _res) in CHECKPOINTS.items():
    register(Backbone(
        name=f"mobilenet_v4_conv_{_v}", family="mobilenet_v4", default_size=_res, min_size=32, max_size=512,
        preprocessing="imagenet_std", feature_width=lambda a: HEAD,
        weights_source=f"timm's hub {_hub} (fetched once, cached; offline: --weights PATH)",
        build_base=_builder(_v, False), build_classifier=_builder(_v, True),
        notes="conv, depthwise, pad, add, ReLU only: fully XNNPACK in int8"))
