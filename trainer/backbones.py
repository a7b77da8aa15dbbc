"""The backbone registry: one home for every pretrained feature extractor edgetl can train on.

Each entry says how to build it, its native input size and allowed sizes, the preprocessing its
ImageNet weights expect (baked into the model: the model always takes RGB 0..255), its feature
width and where its ImageNet weights come from. Like timm / keras-hub, names are the API:
``get_backbone("mobilenet_v2")``. The EfficientNet-Lite family registers itself from its own
module (``trainer.lite``) through the same ``register`` call.
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
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
    extra: dict = field(default_factory=dict)

    def check(self, size: int, alpha: float) -> None:
        if not self.min_size <= size <= self.max_size:
            raise BackboneError(f"{self.name}: input size {size} is outside {self.min_size}-{self.max_size}")
        if alpha not in self.alphas:
            raise BackboneError(f"{self.name}: alpha {alpha} not available; choose one of {list(self.alphas)}")


REGISTRY: dict[str, Backbone] = {}


def register(b: Backbone) -> Backbone:
    REGISTRY[b.name] = b
    return b


def get_backbone(name: str) -> Backbone:
    _load_plugins()
    if name.startswith("hub:"):
        return _hub_backbone(name[4:])
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(REGISTRY))} "
                            "or hub:<handle-or-SavedModel-dir>") from None


def names() -> list[str]:
    _load_plugins()
    return sorted(REGISTRY)


def _load_plugins():
    try:  # the EfficientNet-Lite family lives in its own module and registers itself
        import trainer.lite  # noqa: F401
    except ImportError:
        pass


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
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200]
        raise BackboneError(f"{path}: does not fit backbone {name} ({first}); check --backbone/--alpha") from None
    return model


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


def _register_keras_apps():
    mnv2_width = lambda a: 1280 if a <= 1.0 else int(1280 * a)  # noqa: E731  (Keras rule)
    register(Backbone(
        name="mobilenet_v2", family="mobilenet_v2", default_size=224, min_size=32, max_size=224,
        preprocessing="minus1to1", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), default_alpha=1.0,
        weights_source="keras.applications (ImageNet, ~/.keras/models); local .h5 via --weights",
        feature_width=mnv2_width, build_base=keras_app_builder("MobileNetV2", "mobilenet_v2"),
        build_classifier=keras_app_builder("MobileNetV2", "mobilenet_v2", top=True)))
    for variant, ctor, width in (("small", "MobileNetV3Small", 576), ("large", "MobileNetV3Large", 960)):
        register(Backbone(
            name=f"mobilenet_v3_{variant}", family="mobilenet_v3", default_size=224, min_size=32,
            max_size=224, preprocessing="internal", alphas=(0.75, 1.0), default_alpha=1.0,
            weights_source="keras.applications (ImageNet)",
            feature_width=lambda a, w=width: w,
            notes="int8 HARD_SWISH is not delegated to XNNPACK: int8 can be slower than fp32",
            build_base=keras_app_builder(ctor, f"mobilenet_v3_{variant}", minimalistic=False,
                                         include_preprocessing=True),
            build_classifier=keras_app_builder(ctor, f"mobilenet_v3_{variant}", top=True, minimalistic=False,
                                               include_preprocessing=True)))
    for i, (width, size) in enumerate(((1280, 224), (1280, 240), (1408, 260), (1536, 300))):
        register(Backbone(
            name=f"efficientnet_b{i}", family="efficientnet", default_size=size, min_size=32,
            max_size=600, preprocessing="internal", weights_source="keras.applications (ImageNet)",
            feature_width=lambda a, w=width: w,
            build_base=keras_app_builder(f"EfficientNetB{i}", f"efficientnet_b{i}"),
            build_classifier=keras_app_builder(f"EfficientNetB{i}", f"efficientnet_b{i}", top=True)))
    register(Backbone(
        name="efficientnetv2_b0", family="efficientnetv2", default_size=224, min_size=32, max_size=480,
        preprocessing="internal", weights_source="keras.applications (ImageNet)",
        feature_width=lambda a: 1280,
        build_base=keras_app_builder("EfficientNetV2B0", "efficientnetv2_b0", include_preprocessing=True),
        build_classifier=keras_app_builder("EfficientNetV2B0", "efficientnetv2_b0", top=True,
                                           include_preprocessing=True)))


# --------------------------------------------------------------------------- TF Hub
def _hub_backbone(handle: str) -> Backbone:
    """A TF Hub image feature vector (handle or local SavedModel dir), used frozen.

    hub.KerasLayer needs tf_keras and cannot sit in a Keras 3 model; Keras 3's TFSMLayer loads
    the SavedModel instead (frozen use only, see STACK.md). Hub image models take [0, 1] input.
    """
    def build(size: int, alpha: float, weights: str):
        import keras
        path = handle
        if not Path(handle).is_dir():
            try:
                import tensorflow_hub as hub
                path = hub.resolve(handle)
            except Exception as e:
                raise BackboneError(f"hub:{handle}: could not be fetched ({e.__class__.__name__}); "
                                    "download it where there is internet and pass the local SavedModel folder") from None
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=False)
        except Exception as e:
            raise BackboneError(f"hub:{handle}: not a SavedModel feature vector ({str(e)[:120]})") from None
        inp = keras.Input((size, size, 3))
        out = layer(inp)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return keras.Model(inp, out, name="hub_feature_vector")

    return Backbone(name=f"hub:{handle}", family="hub", default_size=224, min_size=32, max_size=512,
                    preprocessing="unit", weights_source=f"TF Hub {handle}", feature_width=lambda a: -1,
                    build_base=build, notes="frozen only (fine-tuning a TFSMLayer is not supported)")


_register_keras_apps()
