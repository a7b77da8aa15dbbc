"""Is tf.data faster than the trainer's PyDataset loader on TensorFlow? One run, same images,
same decoder, same model, best of alternating rounds: the answer decides whether TensorFlow keeps a loader of its own.

Measured: frozen feature extraction (images/s; no cache, so decoding is in the loop) and one
epoch of fine-tuning from the decoded cache (images/s), each loader fed to the same Keras model.
The tf.data variant is the pipeline the trainer used before (Pillow decode in `numpy_function`,
AUTOTUNE parallel map, cache, prefetch).

    python -m studies.loader.study --data ../shared/assets/data/flowers5_kaggle227 \
        --weights ../shared/assets/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --out studies/loader/results
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def tf_data(paths, labels, size, batch, cache, num_classes=None):
    """The previous tf.data pipeline, kept here only as the baseline."""
    import tensorflow as tf

    from edge_runtime.image import load_image

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, np.int64)))

    def _map(path, label):
        img = tf.numpy_function(lambda p: load_image(p.decode(), size), [path], tf.uint8, stateful=False)
        img.set_shape((size, size, 3))
        return img, label

    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch)
    if num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="best of N, loaders alternating")
    ap.add_argument("--out", type=Path, default=Path("studies/loader/results"))
    a = ap.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    from edge_runtime.atomic import write_json
    from trainer.backbones import get_backbone
    from trainer.data.pipeline import image_dataset, loader_workers
    from trainer.model import build, unfreeze_top

    classes = sorted(p.name for p in Path(a.data).iterdir() if p.is_dir())
    per = -(-a.images // len(classes))
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted((Path(a.data) / c).iterdir())[:per]
        paths += [str(f) for f in files]
        labels += [i] * len(files)
    y = np.array(labels)
    parts = build(get_backbone("mobilenet_v2"), a.size, 1.0, a.weights, len(classes))
    unfreeze_top(parts.base, 6)
    parts.model.compile(keras.optimizers.Adam(1e-5), "categorical_crossentropy", jit_compile=False)
    loaders = {
        "pydataset": lambda cache, nc=None: image_dataset(paths, y, a.size, a.batch, cache=cache, num_classes=nc),
        "tf.data": lambda cache, nc=None: tf_data(paths, y, a.size, a.batch, cache, nc),
    }
    result = {"images": len(paths), "size": a.size, "batch": a.batch, "threads": loader_workers(),
              "backbone": "mobilenet_v2 1.0", "backend": "tensorflow", "rows": {}}
    parts.features.predict(loaders["pydataset"](False), verbose=0, steps=2)   # build, warm up
    best: dict = {}
    for rnd in range(a.rounds):   # alternate, so drift on a shared machine hits both alike
        for name, make in (loaders.items() if rnd % 2 == 0 else reversed(loaders.items())):
            t = time.perf_counter()
            parts.features.predict(make(False), verbose=0)
            fe = len(paths) / (time.perf_counter() - t)
            ds = make(True, len(classes))
            parts.model.fit(ds, epochs=1, verbose=0)                       # fills the cache, traces
            t = time.perf_counter()
            parts.model.fit(ds, epochs=1, verbose=0)
            ft = len(paths) / (time.perf_counter() - t)
            b = best.setdefault(name, {"feature_extraction_images_per_s": 0.0, "fine_tune_images_per_s": 0.0})
            b["feature_extraction_images_per_s"] = max(b["feature_extraction_images_per_s"], round(fe, 1))
            b["fine_tune_images_per_s"] = max(b["fine_tune_images_per_s"], round(ft, 1))
            print(f"round {rnd + 1} {name}: features {fe:.1f} img/s, fine-tune (cached) {ft:.1f} img/s",
                  file=sys.stderr)
    result["rows"] = best
    result["rounds"] = a.rounds
    r = result["rows"]
    result["ratio_pydataset_over_tfdata"] = {
        k: round(r["pydataset"][k] / r["tf.data"][k], 3) for k in r["pydataset"]}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "loader.json", result)
    print(json.dumps(result["ratio_pydataset_over_tfdata"]))


if __name__ == "__main__":
    main()
