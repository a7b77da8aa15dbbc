"""edgetl's frozen training vs the plain Keras-tutorial recipe, same data, split and CPU, one run.

The tutorial recipe (Udacity / Keras guide): frozen MobileNetV2 inside the graph, then
GlobalAveragePooling + Dropout + Dense, Adam, 6 epochs over tf.data, so the backbone runs over
every training and validation image in every epoch. edgetl computes backbone features once and
trains the head on the cache. Both read images through the same decoder and are timed from image
files to a trained model; both are scored on the same held-out test split.

    python -m benchmarks.train_speed --data ../shared/assets/data/flowers5_kaggle227 \
        --weights ../shared/assets/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def tutorial_recipe(split, size: int, alpha: float, weights: str, epochs: int = 6, batch: int = 32, seed: int = 0):
    import keras

    from trainer.data.pipeline import image_dataset

    keras.utils.set_random_seed(seed)
    t0 = time.time()
    n = len(split.classes)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None)
    base.load_weights(weights)
    base.trainable = False
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(n, activation="softmax")(x)
    model = keras.Model(inp, out)
    # XLA off, as in edgetl's trainer: it is 5-11x slower on this CPU (STACK.md), and the ratio
    # must measure the recipe, not a trap.
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    tp, ty = split.paths_labels("train")
    vp, vy = split.paths_labels("val")
    model.fit(image_dataset(tp, ty, size, batch, shuffle=True, seed=seed),
              validation_data=image_dataset(vp, vy, size, batch), epochs=epochs, verbose=2)
    wall = time.time() - t0
    sp, sy = split.paths_labels("test")
    probs = model.predict(image_dataset(sp, sy, size, batch), verbose=0)
    return wall, float((probs.argmax(1) == sy).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True, help="MobileNetV2 ImageNet weights file (.h5)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=6, help="tutorial epochs")
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    a = ap.parse_args(argv)

    from trainer import rundir as R
    from trainer.config import TrainConfig
    from trainer.data.split import Split
    from trainer.train import train

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.time()
        m = train(TrainConfig(data=a.data, out=str(run), backbone="mobilenet_v2", alpha=a.alpha, size=a.size,
                              weights=a.weights))
        edgetl_wall = time.time() - t0
        # "images to trained model": the test-set evaluation and plots come after it
        edgetl_wall_model = m["timing"]["trained_s"]
        edgetl_acc = m["test"]["accuracy"]
        split = Split.load(run / R.SPLIT)
        tut_wall, tut_acc = tutorial_recipe(split, a.size, a.alpha, a.weights, epochs=a.epochs)
    res = {"data": a.data, "backbone": f"mobilenet_v2 {a.alpha}@{a.size}", "test_images": len(split["test"]),
           "edgetl": {"wall_s": round(edgetl_wall_model, 1), "wall_incl_eval_s": round(edgetl_wall, 1),
                      "test_accuracy": round(edgetl_acc, 4)},
           "keras_tutorial": {"epochs": a.epochs, "wall_s": round(tut_wall, 1), "test_accuracy": round(tut_acc, 4)},
           "speedup": round(tut_wall / edgetl_wall_model, 2)}
    print(f"edgetl frozen:    {res['edgetl']['wall_s']:7.1f} s  test accuracy {edgetl_acc:.4f}")
    print(f"Keras tutorial:   {res['keras_tutorial']['wall_s']:7.1f} s  test accuracy {tut_acc:.4f}  ({a.epochs} epochs)")
    print(f"speed-up {res['speedup']:.2f}x; accuracy {'>=' if edgetl_acc >= tut_acc else '<'} tutorial")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if (res["speedup"] >= 4 and edgetl_acc >= tut_acc) else 1


if __name__ == "__main__":
    sys.exit(main())
