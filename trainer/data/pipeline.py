"""The one tf.data input pipeline for training, evaluation, feature caching and calibration.

Decoding and resizing go through `edge_runtime.image` (Pillow), the same code the device runs,
so a model is trained, calibrated and verified on exactly the pixels the device will feed it.
Decoding runs in parallel (Pillow releases the GIL); decoded images can be cached in memory so
fine-tuning epochs after the first cost only the backbone.
"""
from __future__ import annotations

import numpy as np

from edge_runtime.image import RESIZE_METHOD, load_image


def image_dataset(paths, labels=None, size: int = 224, batch_size: int = 32, shuffle: bool = False,
                  seed: int = 0, method: str = RESIZE_METHOD, cache: bool = False, augment=None,
                  num_classes: int | None = None, drop_remainder: bool = False):
    """(uint8 RGB 0..255 batch, label batch) dataset at ``size`` x ``size``.

    ``augment``: a callable on float32 batches (training only). ``num_classes``: one-hot labels.
    """
    import tensorflow as tf

    paths = [str(p) for p in paths]
    labels = np.zeros(len(paths), np.int64) if labels is None else np.asarray(labels, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))

    def _load(path):
        return load_image(path.decode("utf-8"), size, method)

    def _map(path, label):
        img = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        img.set_shape((size, size, 3))
        return img, label

    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(tf.cast(x, tf.float32)), y), num_parallel_calls=tf.data.AUTOTUNE)
    if num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)


def augmenter(seed: int = 0):
    """Flip, small rotation and zoom, brightness and contrast: the fine-tuning augmentation.
    Works on float32 RGB 0..255 batches; never part of the exported model."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.06, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom((-0.15, 0.0), fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomContrast(0.15, seed=seed + 4),
    ], name="augment")


def load_arrays(paths, size: int, method: str = RESIZE_METHOD, workers: int = 4, draft: bool = False) -> np.ndarray:
    """All images of a (small) list as one uint8 array, decoded in parallel without TensorFlow
    (``draft``: JPEG DCT-scaled decoding, as the device may use)."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: load_image(p, size, method, draft=draft), paths)):
            out[i] = arr
    return out
