"""The one input pipeline for training, evaluation, feature caching and calibration, on every
Keras backend: a `keras.utils.PyDataset` of uint8 batches.

Decoding and resizing go through `edge_runtime.image` (Pillow), the same code the device runs,
so a model is trained, calibrated and verified on exactly the pixels the device will feed it.
Keras fetches batches on worker threads (Pillow releases the GIL while decoding and resizing);
decoded images can be kept in memory so epochs after the first cost only the model. Augmentation
is not done here but inside the training graph (`augmenter`), where it runs on the accelerator.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

from edge_runtime.cores import usable_cores
from edge_runtime.image import RESIZE_METHOD, load_image

CACHE_LIMIT_BYTES = 3e9   # decoded images of one split kept in RAM up to this; above it, on disk


def cores() -> int:
    """Cores this process may run on."""
    return len(usable_cores())


def loader_workers() -> int:
    """Threads decoding batches: every core, at least two (one decodes while one waits)."""
    return max(2, cores())


@functools.cache
def _batches_class():
    """Defined on first use: importing Keras binds its backend, which `edgetl train --backend`
    chooses first."""
    import keras

    class ImageBatches(keras.utils.PyDataset):
        """(uint8 RGB batch[, label batch]) at ``size`` x ``size``, in a fixed order or reshuffled
        each epoch from ``seed``. ``num_classes``: one-hot float32 labels; ``shard``: (index,
        count) keeps this process's share of every global batch (multi-worker training);
        ``pad_multiple``: the last batch repeats its last image up to a multiple of this (batches
        split over several devices must divide evenly; callers drop the padded outputs);
        ``spill_dir``: the decoded-image cache lives in a memory-mapped file there when it would
        take more than CACHE_LIMIT_BYTES of RAM."""

        def __init__(self, paths, labels=None, size=224, batch_size=32, shuffle=False, seed=0,
                     *, method=RESIZE_METHOD, cache=False, num_classes=None, drop_remainder=False,
                     shard=(0, 1), workers=None, pad_multiple=1, spill_dir=None):
            workers = workers or loader_workers()
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
            self.paths = [str(p) for p in paths]
            self.labels = None if labels is None else np.asarray(labels, np.int64)
            self.size, self.batch_size, self.method = size, int(batch_size), method
            self.shuffle, self.seed, self.epoch = shuffle, seed, 0
            self.num_classes, self.drop_remainder, self.shard = num_classes, drop_remainder, shard
            self.pad_multiple = pad_multiple
            n = len(self.paths)
            self._cache = _image_cache((n, size, size, 3), spill_dir) if cache else None
            self._cached = np.zeros(n, bool)
            self._lock = threading.Lock()
            self._order = self._make_order()

        def _make_order(self):
            n = len(self.paths)
            if not self.shuffle:
                return np.arange(n)
            return np.random.default_rng([self.seed, self.epoch]).permutation(n)

        def __len__(self):
            n = len(self.paths)
            return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

        def on_epoch_end(self):
            self.epoch += 1
            with self._lock:
                self._order = self._make_order()

        def image(self, i: int) -> np.ndarray:
            if self._cache is not None and self._cached[i]:
                return self._cache[i]
            arr = load_image(self.paths[i], self.size, self.method)
            if self._cache is not None:
                self._cache[i] = arr
                self._cached[i] = True
            return arr

        def indices(self, b: int) -> np.ndarray:
            with self._lock:
                idx = self._order[b * self.batch_size:(b + 1) * self.batch_size]
            k, count = self.shard
            if count > 1:
                per = len(idx) // count
                idx = idx[k * per:(k + 1) * per]
            short = -len(idx) % self.pad_multiple
            if short:
                idx = np.concatenate([idx, np.repeat(idx[-1:], short)])
            return idx

        def __getitem__(self, b):
            idx = self.indices(b)
            x = np.empty((len(idx), self.size, self.size, 3), np.uint8)
            for j, i in enumerate(idx):
                x[j] = self.image(i)
            if self.labels is None:
                return (x,)
            y = self.labels[idx]
            if self.num_classes:
                y = np.eye(self.num_classes, dtype=np.float32)[y]
            return x, y

    return ImageBatches


def _image_cache(shape: tuple, spill_dir=None) -> np.ndarray:
    """uint8 storage for decoded images: RAM up to CACHE_LIMIT_BYTES, else (with ``spill_dir``) a
    memory-mapped file there that is unlinked at once, so it disappears with the process even
    when the process is killed; the kernel pages it out instead of the process running out."""
    nbytes = int(np.prod(shape))
    if nbytes <= CACHE_LIMIT_BYTES or spill_dir is None:
        return np.empty(shape, np.uint8)
    import tempfile
    os.makedirs(spill_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=spill_dir, prefix="images-", suffix=".u8") as f:
        f.truncate(nbytes)
        return np.memmap(f, np.uint8, mode="r+", shape=shape)


def image_dataset(paths, labels=None, size: int = 224, batch_size: int = 32, shuffle: bool = False,
                  seed: int = 0, method: str = RESIZE_METHOD, *, cache: bool | None = None,
                  num_classes: int | None = None, drop_remainder: bool = False, shard=(0, 1), workers=None,
                  pad_multiple: int = 1, spill_dir=None):
    """Batches for `model.fit` / `model.predict`. ``cache=None``: keep decoded images, in memory
    when they fit under CACHE_LIMIT_BYTES, else memory-mapped in ``spill_dir`` (without one,
    over the limit, nothing is kept)."""
    if cache is None:
        cache = spill_dir is not None or len(paths) * size * size * 3 <= CACHE_LIMIT_BYTES
    return _batches_class()(paths, labels, size, batch_size, shuffle, seed, method=method, cache=cache,
                            num_classes=num_classes, drop_remainder=drop_remainder, shard=shard, workers=workers,
                            pad_multiple=pad_multiple, spill_dir=spill_dir)


def predict_images(model, paths, size: int, batch_size: int = 32, method: str = RESIZE_METHOD,
                   hw=None, verbose: int = 0) -> np.ndarray:
    """``model``'s outputs for every image of ``paths``, in order, wherever it was placed (``hw``:
    trainer.hardware.Hardware; None: one device). Several processes of TensorFlow's multi-worker
    strategy would each get only their shard of the predictions from `predict`, so there each
    process calls the model itself on every batch."""
    import keras

    if not paths:
        return np.zeros((0,) + tuple(model.outputs[0].shape[1:]), np.float32)
    replicas = hw.replicas if hw is not None else 1
    ds = image_dataset(paths, size=size, batch_size=batch_size, method=method, cache=False, pad_multiple=replicas)
    if hw is not None and hw.processes > 1 and hw.backend == "tensorflow":
        out = np.concatenate([keras.ops.convert_to_numpy(model(ds[i][0], training=False)) for i in range(len(ds))])
    else:
        out = model.predict(ds, verbose=verbose)
    return np.asarray(out, np.float32)[:len(paths)]


def augmenter(seed: int = 0):
    """Flip, small rotation and zoom, brightness and contrast: the fine-tuning augmentation.
    Works on float32 RGB 0..255 batches inside the training graph; never part of the exported model."""
    import keras

    kw = {"dtype": "float32"}  # pixel arithmetic stays float32 under a mixed-precision policy
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed, **kw),
        _rotate_zoom_class()(rotation=0.06, zoom_in=0.15, seed=seed + 1, **kw),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 3, **kw),
        keras.layers.RandomContrast(0.15, seed=seed + 4, **kw),
    ], name="augment")


@functools.cache
def _rotate_zoom_class():
    import keras

    class RandomRotateZoom(keras.layers.Layer):
        """Rotate by up to ``rotation`` turns and zoom in by up to ``zoom_in`` about the centre,
        reflecting at the edges: one affine transform per image. Keras' RandomRotation and
        RandomZoom declare themselves not jit-compilable, which makes every JAX training step run
        op by op (about 20x slower on CPU); this layer compiles on every backend."""

        def __init__(self, rotation: float, zoom_in: float, seed=None, **kw):
            super().__init__(**kw)
            self.rotation, self.zoom_in = rotation, zoom_in
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=False):
            if not training:
                return images
            ops = keras.ops
            n = ops.shape(images)[0]
            cy, cx = (images.shape[1] - 1) / 2, (images.shape[2] - 1) / 2
            a = keras.random.uniform((n, 1), -self.rotation, self.rotation, seed=self.generator) * 2 * np.pi
            z = keras.random.uniform((n, 1), 1.0 - self.zoom_in, 1.0, seed=self.generator)
            # output pixel p samples the input at c + z * R(a) (p - c)
            a0, a1, b0, b1 = z * ops.cos(a), -z * ops.sin(a), z * ops.sin(a), z * ops.cos(a)
            t = ops.concatenate([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy,
                                 ops.zeros_like(z), ops.zeros_like(z)], axis=1)
            return ops.image.affine_transform(images, t, interpolation="bilinear", fill_mode="reflect")

        def compute_output_shape(self, input_shape):
            return input_shape

    return RandomRotateZoom


def training_model(model, augment):
    """``model`` behind ``augment`` (active only while training): what `fit` trains. It shares
    every weight with ``model``, which stays the exported graph, free of augmentation layers."""
    import keras

    if augment is None:
        return model
    inp = keras.Input(model.inputs[0].shape[1:], name="image")
    x = augment(keras.ops.cast(inp, "float32"))
    return keras.Model(inp, model(x), name=f"{model.name}_training")


def load_arrays(paths, size: int, method: str = RESIZE_METHOD, workers: int = 4, draft: bool = False) -> np.ndarray:
    """All images of a (small) list as one uint8 array, decoded in parallel
    (``draft``: JPEG DCT-scaled decoding, as the device may use)."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: load_image(p, size, method, draft=draft), paths)):
            out[i] = arr
    return out
