"""What the insight tools look into: a trained run's model, or a backbone's ImageNet classifier.

Both are the same shape, built by edgetl: RGB 0..255 -> [preprocessing] -> backbone (a nested
Keras model) -> [head] -> softmax. A `Subject` rebuilds that chain as a *probe*: the same layers
and weights, returning the backbone's inner feature maps that a tool asks for and the logits
(the softmax's input). Layers are found from the model (rank-4 outputs inside the backbone),
never from a per-backbone list of names, so every registry family and fine-tuned runs work alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.classifier import softmax
from edge_runtime.errors import UserError
from edge_runtime.image import load_image

from ..runs import rundir as R


def keras_tf():
    """Keras on TensorFlow (the tools take gradients with tf.GradientTape) -> (keras, tf)."""
    from ..hardware import use_backend

    with use_backend("tensorflow"):
        import keras
        import tensorflow as tf
    return keras, tf


@dataclass
class Subject:
    model: object                 # keras.Model: image (RGB 0..255, float32) -> probabilities
    classes: list[str]
    size: int
    resize: str
    name: str                     # the run folder, or imagenet:<backbone>
    run: Path | None = None
    backbone: object = field(default=None, repr=False)
    _probes: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ classes and images
    def class_index(self, name: str | int) -> int:
        """A class given by name (as in labels.txt) or by its index."""
        if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()
                                                   and name not in self.classes):
            i = int(name)
            if 0 <= i < len(self.classes):
                return i
        elif name in self.classes:
            return self.classes.index(name)
        shown = ", ".join(self.classes[:12]) + (" ..." if len(self.classes) > 12 else "")
        raise UserError(f"unknown class {name!r} for {self.name}; choose one of: {shown}")

    def load(self, image) -> np.ndarray:
        """A photo (path or array) -> uint8 RGB at the model's size, resized as the device does."""
        return load_image(image, self.size, self.resize)

    # ------------------------------------------------------------------ layers
    def spatial_layers(self) -> list[str]:
        """Backbone layers whose output is a feature map (rank 4, more than 1x1), in graph order,
        from the first convolution on: the layers before it only rescale the photo, and padding
        layers only repeat their input with a border, so both are left out."""
        out, seen_conv = [], False
        for layer in self.backbone.layers:
            seen_conv = seen_conv or len(getattr(getattr(layer, "kernel", None), "shape", ())) == 4
            shape = _output_shape(layer)
            if seen_conv and shape is not None and len(shape) == 4 and (shape[1] or 0) > 1 \
                    and layer.name not in out and layer.__class__.__name__ != "ZeroPadding2D":
                out.append(layer.name)
        return out

    def stage_outputs(self) -> list[str]:
        """The last feature map at each spatial resolution: what each stage hands on."""
        last: dict[int, str] = {}
        for name in self.spatial_layers():
            last[int(_output_shape(self.backbone.get_layer(name))[1])] = name
        return [last[k] for k in sorted(last, reverse=True)]

    def default_cam_layer(self) -> str:
        """The backbone's last spatial feature map (Grad-CAM's usual choice)."""
        layers = self.spatial_layers()
        if not layers:
            raise UserError(f"{self.name}: the backbone has no spatial feature maps to look at")
        return layers[-1]

    def check_layer(self, name: str) -> str:
        layers = self.spatial_layers()
        if name not in layers:
            hint = ", ".join(self.stage_outputs())
            raise UserError(f"no feature-map layer {name!r} in {self.backbone.name}; stage outputs are: {hint} "
                            "(any layer with a spatial output works)")
        return name

    # ------------------------------------------------------------------ probes
    def probe(self, layers: tuple[str, ...] = ()):
        """keras.Model: image -> [feature map of each layer..., logits]; cached per layer set."""
        key = tuple(layers)
        if key not in self._probes:
            for n in key:
                self.check_layer(n)
            self._probes[key] = _build_probe(self.model, self.backbone, key)
        return self._probes[key]

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits for a batch of uint8/float RGB images (no gradients)."""
        m = self.probe(())
        out = [np.asarray(as_list(m(np.asarray(images[i:i + batch_size], np.float32), training=False))[-1])
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))

    def test_split(self, why: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(paths, labels, uint8 pixels) of the run's test split; ``why`` names the option needing it."""
        if self.run is None:
            raise UserError(f"{why} needs a trained run (its test split)")
        from ..data.split import Split

        split_dir = self.run / R.SPLIT
        if not split_dir.is_dir():
            raise UserError(f"{split_dir}: missing; the run has no test split (re-run edgetl train)")
        paths, y = Split.load(split_dir).paths_labels("test")
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise UserError(f"{missing[0]}: test photo not found (the data folder moved?); restore the data "
                            "folder where it was when the run was trained")
        pixels = np.stack([self.load(p) for p in paths]) if paths else np.zeros((0, self.size, self.size, 3), np.uint8)
        return paths, y, pixels


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):   # a layer used twice, or never built
        return None


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _find_backbone(model):
    """The nested model that holds the feature maps: the top-level layer with spatial layers."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(
                (s := _output_shape(sub)) is not None and len(s) == 4 for sub in layer.layers):
            return layer
    return None


def _build_probe(model, backbone, layers: tuple[str, ...]):
    import keras

    inner = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in layers] + [backbone.outputs[0]],
                        name="probe_backbone")
    inp = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x, maps = inp, []
    chain = [l for l in model.layers if l.__class__.__name__ != "InputLayer"]
    if not chain or chain[-1].__class__.__name__ != "Softmax":
        raise UserError(f"{model.name}: the model does not end in a softmax layer; insight needs an "
                        "edgetl model (RGB in, probabilities out)")
    for layer in chain[:-1]:
        if layer is backbone:
            *maps, x = as_list(inner(x, training=False))
        else:
            x = layer(x, training=False)
    return keras.Model(inp, [*maps, keras.ops.cast(x, "float32")], name="probe")


def _verify_chain(subject: Subject) -> None:
    """The probe must compute exactly what the model computes; one forward pass settles it."""
    x = np.random.default_rng(0).uniform(0, 255, (1, subject.size, subject.size, 3)).astype(np.float32)
    want = np.asarray(subject.model(x, training=False), np.float32)
    got = softmax(subject.logits(x))
    if not np.allclose(want, got, atol=1e-4):
        raise UserError(f"{subject.name}: the model is not a plain chain of layers edgetl can probe "
                        f"(max difference {float(np.abs(want - got).max()):.2g})")


def _subject(model, classes, resize, name, run=None) -> Subject:
    backbone = _find_backbone(model)
    if backbone is None:
        raise UserError(f"{name}: no backbone with inner feature maps in this model (a hub: SavedModel "
                        "backbone cannot be looked into); train on a registry backbone")
    size = int(model.inputs[0].shape[1])
    n = int(model.outputs[0].shape[-1])
    if len(classes) != n:
        raise UserError(f"{name}: the model has {n} outputs but {len(classes)} class names")
    s = Subject(model=model, classes=list(classes), size=size, resize=resize, name=name, run=run,
                backbone=backbone)
    _verify_chain(s)
    return s


def open_run(run) -> Subject:
    """A trained run folder (the one `edgetl train --out` wrote) as a Subject."""
    p = Path(run)
    if p.is_file():
        kind = "a .tflite artifact" if p.suffix == ".tflite" else "a file"
        raise UserError(f"{p}: is {kind}; insight needs the training run folder (the one holding "
                        "model.keras), e.g. the folder above deploy/")
    if p.is_dir() and not (p / R.MODEL).exists() and (p / "manifest.json").exists():
        raise UserError(f"{p}: is a deploy folder; insight needs the training run folder above it "
                        f"(with model.keras), e.g. {p.parent}")
    if not p.is_dir():
        raise UserError(f"{p}: no such run folder; give the folder `edgetl train --out` wrote")
    if not (p / R.LABELS).exists():
        raise UserError(f"{p / R.LABELS}: missing; this is not a complete run folder (re-run edgetl train)")
    keras_tf()
    from ..evaluate import load_run_model

    model = load_run_model(p)
    return _subject(model, R.read_labels(p), R.read_resize(p), str(p), run=p)


def open_imagenet(backbone: str = "mobilenet_v2", weights: str = "imagenet", size: int | None = None,
                  alpha: float | None = None, labels: str | None = None) -> Subject:
    """A backbone's own 1000-class ImageNet classifier as a Subject (class names from ``labels``)."""
    keras_tf()
    from ..imagenet import build_imagenet_model, class_names

    names = class_names(labels)
    model, size = build_imagenet_model(backbone, size, alpha, weights)
    return _subject(model, names, "bilinear", f"imagenet:{backbone}")
