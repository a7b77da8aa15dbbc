"""The full pretrained ImageNet classifier of a backbone, on photos: a quick check that weights loaded
right (the Udacity seed's first exercise), for every backbone whose 1000-class head is available.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_runtime.image import ImageError, load_image

from .backbones import KERAS_CACHE, BackboneError, get_backbone, preprocessing_layer

CLASS_INDEX = "imagenet_class_index.json"
CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"


def class_names(labels: str | None = None) -> list[str]:
    """The 1000 ImageNet class names, in the Keras order.

    ``labels``: a Keras ``imagenet_class_index.json`` or a text file with one name per line (1000
    lines, or 1001 with ``background`` first). Without it the Keras cache file is used, downloaded
    the standard Keras way when missing.
    """
    if labels is None:
        path = KERAS_CACHE / CLASS_INDEX
        if not path.is_file():
            try:
                import keras
                path = Path(keras.utils.get_file(CLASS_INDEX, CLASS_INDEX_URL, cache_subdir="models"))
            except Exception:  # noqa: BLE001 - any failure here has one meaning for the user
                raise BackboneError(f"ImageNet class names could not be downloaded (offline?): place {CLASS_INDEX} "
                                    f"in {KERAS_CACHE}/ or pass --labels PATH") from None
        labels = str(path)
    p = Path(labels)
    if not p.is_file():
        raise BackboneError(f"{labels}: labels file not found")
    try:
        if p.suffix == ".json":
            idx = json.loads(p.read_text())
            names = [idx[str(i)][1] for i in range(len(idx))]
        else:
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            if len(names) == 1001 and names[0].lower() == "background":
                names = names[1:]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BackboneError(f"{labels}: not a Keras imagenet_class_index.json or a names-per-line file") from None
    if len(names) != 1000:
        raise BackboneError(f"{labels}: has {len(names)} class names, ImageNet needs 1000")
    return names


def build_imagenet_model(backbone: str, size: int | None = None, alpha: float | None = None,
                         weights: str = "imagenet"):
    """RGB 0..255 -> 1000 ImageNet probabilities, preprocessing baked in like every edgetl model."""
    import keras

    spec = get_backbone(backbone)
    if spec.build_classifier is None:
        raise BackboneError(f"{backbone} has no 1000-class ImageNet head in edgetl")
    size = size or spec.default_size
    alpha = spec.default_alpha if alpha is None else alpha
    spec.check(size, alpha)
    net = spec.build_classifier(size, alpha, weights)
    inp = keras.Input((size, size, 3), name="image")
    pre = preprocessing_layer(spec.preprocessing)
    x = pre(inp) if pre is not None else inp
    out = keras.layers.Softmax(name="probabilities")(net(x))
    return keras.Model(inp, out, name=f"imagenet_{backbone}"), size


def classify_images(paths, backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                    size: int | None = None, alpha: float | None = None, labels: str | None = None,
                    top_k: int = 5, *, skipped: list | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """``[(path, [(class name, probability), ...]), ...]`` for each image, best first. An unreadable
    image raises ImageError, unless ``skipped`` is a list: then it is appended there as
    ``(path, reason)`` and the others are still classified."""
    names = class_names(labels)
    model, size = build_imagenet_model(backbone, size, alpha, weights)
    good, pixels = [], []
    for p in paths:
        try:
            pixels.append(load_image(p, size).astype(np.float32))
            good.append(p)
        except ImageError as e:
            if skipped is None:
                raise
            skipped.append((str(p), str(e)))
    if not good:
        return []
    probs = model.predict(np.stack(pixels), verbose=0, batch_size=16)
    out = []
    for p, pr in zip(good, probs):
        top = np.argsort(-pr)[:top_k]
        out.append((str(p), [(names[i], float(pr[i])) for i in top]))
    return out
