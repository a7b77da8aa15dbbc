"""Grad-CAM: where the model looked for a class (Selvaraju et al., 2017).

The class score's gradient with respect to a feature map, averaged over the map's positions,
weighs the map's channels; their weighted sum, clipped at zero, is a coarse heatmap of the
evidence for the class, upsampled to the photo. The logit (softmax input) is differentiated,
not the probability, so a confident class still has a useful gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_runtime.classifier import softmax

from .subject import Subject, keras_tf


@dataclass
class Explanation:
    image: np.ndarray          # uint8 RGB at the model's size
    heatmap: np.ndarray        # float32 in [0, 1], same height and width as ``image``
    coarse: np.ndarray         # the heatmap at the feature map's own resolution
    class_index: int           # the class explained
    probabilities: np.ndarray
    layer: str
    source: str = ""
    top: list = field(default_factory=list)   # [(class name, probability)] best first, 3

    @property
    def peak(self) -> tuple[int, int]:
        """(x, y) of the heatmap's maximum, in model-input pixels. Upsampling holds an edge
        cell's value flat out to the border, so the maximum can be a plateau: its centre counts."""
        ys, xs = np.nonzero(self.heatmap >= self.heatmap.max() - 1e-6)
        return int(round(xs.mean())), int(round(ys.mean()))


def grad_cam(subject: Subject, images: np.ndarray, classes=None, layer: str | None = None,
             batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coarse heatmaps [N, h, w] in [0, 1], class index per image, probabilities [N, C]).
    ``classes``: one class per image (index), or None for each image's predicted class."""
    keras, tf = keras_tf()
    layer = layer or subject.default_cam_layer()
    probe = subject.probe((layer,))
    maps_out, idx_out, prob_out = [], [], []
    for i in range(0, len(images), batch_size):
        x = tf.constant(np.asarray(images[i:i + batch_size], np.float32))
        with tf.GradientTape() as tape:
            fmap, logits = probe(x, training=False)
            want = (tf.argmax(logits, axis=-1, output_type=tf.int32) if classes is None
                    else tf.constant(np.asarray(classes[i:i + batch_size], np.int32)))
            score = tf.gather(logits, want, axis=1, batch_dims=1)
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(fmap, tf.float32), axis=-1)).numpy()
        top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        maps_out.append(np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0).astype(np.float32))
        idx_out.append(want.numpy())
        prob_out.append(softmax(logits.numpy()))
    return np.concatenate(maps_out), np.concatenate(idx_out), np.concatenate(prob_out)


def upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """A coarse heatmap -> size x size, bilinear (cell centres aligned with pixel centres)."""
    from PIL import Image

    return np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize((size, size), Image.Resampling.BILINEAR),
                      np.float32)


def explain(subject: Subject, images, class_name: str | int | None = None, layer: str | None = None) -> list[Explanation]:
    """Grad-CAM for each photo (paths or arrays), for ``class_name`` or each photo's predicted class."""
    if layer is not None:
        subject.check_layer(layer)
    layer = layer or subject.default_cam_layer()
    arrays = np.stack([subject.load(im) for im in images])
    want = None if class_name is None else [subject.class_index(class_name)] * len(arrays)
    coarse, idx, probs = grad_cam(subject, arrays, want, layer)
    out = []
    for k, im in enumerate(images):
        order = np.argsort(-probs[k])[:3]
        out.append(Explanation(image=arrays[k], heatmap=upsample(coarse[k], subject.size), coarse=coarse[k],
                               class_index=int(idx[k]), probabilities=probs[k], layer=layer,
                               source=str(im) if not isinstance(im, np.ndarray) else "",
                               top=[(subject.classes[j], float(probs[k][j])) for j in order]))
    return out


def explain_misclassified(subject: Subject, max_images: int = 16, layer: str | None = None) -> list[tuple[Explanation, int]]:
    """The run's wrong test predictions, each explained for the class it was taken for:
    [(explanation, true class index)], the most confident mistakes first."""
    paths, y, pixels = subject.test_split("--misclassified")
    probs = subject.probabilities(pixels) if len(pixels) else np.zeros((0, len(subject.classes)))
    wrong = np.flatnonzero(probs.argmax(axis=1) != y)
    wrong = wrong[np.argsort(-probs[wrong].max(axis=1))][:max_images]
    if not len(wrong):
        return []
    exps = explain(subject, [paths[i] for i in wrong], None, layer)
    return list(zip(exps, [int(y[i]) for i in wrong]))
