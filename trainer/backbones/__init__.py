"""The backbone registry: one home for every pretrained feature extractor edgetl can train on.

Each entry says how to build it, its native input size and allowed sizes, the preprocessing its
ImageNet weights expect (baked into the model: the model always takes RGB 0..255), its feature
width and where its ImageNet weights come from. Like timm / keras-hub, names are the API:
``get_backbone("mobilenet_v2")``. Each family is a module of this package that registers its
members when imported; all are imported below, so the registry is complete on import.
``hub:<handle>`` names a TF Hub feature vector outside the registry (`hub.py`).
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_runtime.errors import UserError

# Keras' own download cache, where weights="imagenet" looks first.
KERAS_CACHE = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


class BackboneError(UserError):
    """Unknown backbone, unusable size/alpha, or weights that cannot be loaded."""


@dataclass(frozen=True)
class Backbone:
    name: str
    family: str
    default_size: int
    min_size: int
    max_size: int
    preprocessing: str              # what the baked-in layer does to RGB 0..255
    weights_source: str             # where weights="imagenet" comes from
    feature_width: Callable[[float], int]
    build_base: Callable[..., object]  # (size, alpha, weights) -> keras.Model (no top, avg pooled)
    # (size, alpha, weights) -> keras.Model with the 1000-class ImageNet head (logits); None if
    # the backbone has no such head (used by `edgetl imagenet`)
    build_classifier: Callable[..., object] | None = None
    alphas: tuple[float, ...] = (1.0,)
    default_alpha: float = 1.0
    notes: str = ""
    # Inner layers whose globally averaged outputs join the final pooled features (a multi-scale
    # linear probe): the head also sees mid-level texture and shape, which the last layer, tuned
    # to ImageNet's classes, partly discards. Chosen per backbone by nested cross-validation on
    # training photos only (studies/feature_taps/results); empty = the final features alone.
    taps: tuple[str, ...] = ()

    def check(self, size: int, alpha: float) -> None:
        if not self.min_size <= size <= self.max_size:
            raise BackboneError(f"{self.name}: input size {size} is outside {self.min_size}-{self.max_size}")
        if alpha not in self.alphas:
            raise BackboneError(f"{self.name}: alpha {alpha} not available; choose one of {list(self.alphas)}")


REGISTRY: dict[str, Backbone] = {}


def register(b: Backbone) -> Backbone:
    if b.name in REGISTRY:
        from edge_runtime.log import warn_once
        warn_once(f"backbone {b.name!r} registered twice ({REGISTRY[b.name].family} and {b.family}); "
                  "the later one is used")
    REGISTRY[b.name] = b
    return b


def get_backbone(name: str) -> Backbone:
    if name.startswith("hub:"):
        from .hub import hub_backbone
        return hub_backbone(name[4:])
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(REGISTRY))} "
                            "or hub:<handle-or-SavedModel-dir>") from None


def names() -> list[str]:
    return sorted(REGISTRY)


# --------------------------------------------------------------------------- preprocessing
def preprocessing_layer(kind: str):
    """The Keras layer that maps RGB 0..255 to what a backbone's weights expect."""
    import keras

    if kind == "minus1to1":      # MobileNetV2 / hub MobileNets: x / 127.5 - 1
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if kind == "unit":           # TF Hub image feature vectors: [0, 1]
        return keras.layers.Rescaling(1 / 255.0, name="preprocess")
    if kind == "lite":           # EfficientNet-Lite checkpoints: (x - 127) / 128
        return keras.layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name="preprocess")
    if kind == "imagenet_std":   # timm's checkpoints: (x / 255 - ImageNet mean) / ImageNet std, per channel
        mean = [255 * m for m in (0.485, 0.456, 0.406)]
        variance = [(255 * s) ** 2 for s in (0.229, 0.224, 0.225)]
        return keras.layers.Normalization(mean=mean, variance=variance, name="preprocess")
    if kind == "internal":       # the Keras application rescales/normalises inside itself
        return None
    raise ValueError(kind)


# --------------------------------------------------------------------------- weights
def _imagenet_or_explain(build: Callable, name: str):
    """Call a keras.applications builder with weights='imagenet'; offline, say what to place where."""
    try:
        return build("imagenet")
    except Exception as e:  # Keras raises a bare Exception('URL fetch failure on <url>: ...')
        url = re.search(r"https?://\S+?\.h5", str(e))
        if not url:
            raise
        fname = url.group(0).rsplit("/", 1)[1]
        raise BackboneError(
            f"{name}: ImageNet weights could not be downloaded (offline?). Place {fname} in "
            f"{KERAS_CACHE}/ or pass --weights PATH (a Keras weights file), or --weights none") from None


def _load_weights_file(model, path: str, name: str):
    p = Path(path)
    if not p.is_file():
        raise BackboneError(f"{path}: weights file not found (for --weights use 'imagenet', 'none' or a file)")
    try:
        model.load_weights(str(p))
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        first = str(e).strip().splitlines()[0][:200]
        raise BackboneError(f"{path}: does not fit backbone {name} ({first}); check --backbone/--alpha") from None
    return model


def assign(model, arrays: dict[str, list], source: str) -> None:
    """Set every layer of ``model`` that has weights from ``arrays`` (shapes must agree)."""
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in arrays:
            raise BackboneError(f"{source}: no weights for layer {layer.name}")
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays[layer.name]]
        if want != got:
            raise BackboneError(f"{source}: layer {layer.name} expects {want}, the file has {got}: wrong variant")
        layer.set_weights(arrays[layer.name])


def keras_app_builder(app: str, name: str, top: bool = False, **fixed):
    """Builder for the keras.applications model ``app`` (class name) with chosen weights: no top,
    global average pooling, or (``top``) the ImageNet classifier ending in logits. Keras is
    imported only when a model is built: importing it binds the backend `edgetl train` chooses."""
    def build(size: int, alpha: float, weights: str):
        import keras
        ctor = getattr(keras.applications, app)
        kwargs = (dict(input_shape=(size, size, 3), include_top=True, classifier_activation=None, **fixed) if top
                  else dict(input_shape=(size, size, 3), include_top=False, pooling="avg", **fixed))
        if "alpha" in inspect.signature(ctor).parameters:
            kwargs["alpha"] = alpha
        if weights == "imagenet":
            return _imagenet_or_explain(lambda w: ctor(weights=w, **kwargs), name)
        model = ctor(weights=None, **kwargs)
        if weights not in (None, "none"):
            _load_weights_file(model, weights, name)
        return model
    return build


# Every family, imported explicitly (each module registers its members).
from . import efficientnet, efficientnet_lite, mobilenet, mobilenet_v4  # noqa: E402,F401
