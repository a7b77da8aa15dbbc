"""Training throughput on whatever accelerator is present (GPU, or the CPU), on either Keras backend.

Per backbone, batch size and precision policy: images/s for feature extraction from the decoded
cache (the frozen phase) and for fine-tuning (augmentation in the graph, top blocks unfrozen, as
`edgetl train --fine-tune` does), and the share of fine-tuning time spent waiting for data (the
same steps fed from memory, without the loader, set the pace).
Once: the loader's decode throughput with every core (JPEG decode + resize, no cache). The data is
the project's synthetic generator, so a GPU box needs only the project, the Keras wheels and, for
MobileNetV2's ImageNet weights, one file (throughput does not depend on weight values, so random
init is used where no file is given).

    KERAS_BACKEND=jax python -m benchmarks.gpu_train --out benchmarks/results/gpu_train \
        --weights mobilenet_v2=PATH/mobilenet_v2_1.0_224_imagenet_no_top.h5
    python -m benchmarks.gpu_train --quick --out benchmarks/results/gpu_train   # a CPU box
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BACKBONES = ("mobilenet_v2", "efficientnet_lite0")


def decode_throughput(paths, size: int, workers: int) -> dict:
    """JPEG decode + resize through the trainer's loader, every core, no cache."""
    from trainer.data.pipeline import image_dataset
    ds = image_dataset(paths, size=size, batch_size=64, cache=False, workers=workers)
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        n = sum(len(b[0]) for b in pool.map(ds.__getitem__, range(len(ds))))
    dt = time.perf_counter() - t
    return {"images": n, "threads": workers, "images_per_s": round(n / dt, 1)}


def _build(name: str, size: int, weights: dict, n_classes: int):
    from trainer.backbones import get_backbone
    from trainer.model import build
    spec = get_backbone(name)
    return build(spec, size, spec.default_alpha, weights.get(name, "none"), n_classes)


def feature_extraction(parts, cached, steps: int) -> dict:
    """Images/s of the frozen backbone over the decoded cache (the first pass fills it and compiles)."""
    parts.features.predict(cached, verbose=0, steps=min(2, len(cached)))
    t = time.perf_counter()
    parts.features.predict(cached, verbose=0, steps=steps)    # returns host arrays: work is done
    dt = time.perf_counter() - t
    n = steps * cached.batch_size
    return {"images_per_s": round(n / dt, 1), "images": n, "seconds": round(dt, 3)}


def fine_tuning(parts, batches, hw, steps: int, blocks: int = 6) -> dict:
    """Images/s of fine-tuning steps fed by the loader (after a warm-up that compiles and fills the
    cache), and the share of that time spent waiting for data: the same steps fed from one array
    already in memory set the pace without a loader, and the rest of the loader's time is waiting."""
    import keras

    from trainer.data.pipeline import augmenter, training_model
    from trainer.model import unfreeze_top

    unfreeze_top(parts.base, blocks)
    model = training_model(parts.model, augmenter(0))
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.CategoricalCrossentropy(), jit_compile=hw.jit_compile)
    model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)      # compile, start filling the cache
    for i in range(steps):
        batches[i]                                                   # every timed batch decoded once
    t = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    with_loader = time.perf_counter() - t
    x = np.concatenate([batches[i][0] for i in range(steps)])
    y = np.concatenate([batches[i][1] for i in range(steps)])
    model.fit(x[:2 * batches.batch_size], y[:2 * batches.batch_size], batch_size=batches.batch_size, epochs=1,
              verbose=0, shuffle=False)                              # this feeding path's own warm-up
    t = time.perf_counter()
    model.fit(x, y, batch_size=batches.batch_size, epochs=1, verbose=0, shuffle=False)
    in_memory = time.perf_counter() - t
    n = steps * batches.batch_size
    return {"images_per_s": round(n / with_loader, 1), "images": n, "seconds": round(with_loader, 3),
            "in_memory_images_per_s": round(n / in_memory, 1),
            "data_wait_share": round(max(0.0, 1 - in_memory / with_loader), 4)}


def run(out: Path, batch_sizes, backbones, precisions, weights: dict, images: int, size: int,
        *, steps: int, ft_steps: int, backend: str | None, mixed: str) -> dict:
    from trainer.data.pipeline import image_dataset, loader_workers
    from trainer.data.synthetic import generate
    from trainer.hardware import setup, use_backend

    with use_backend(backend) as backend, tempfile.TemporaryDirectory() as tmp:
        import keras
        data = generate(Path(tmp) / "synth", per_class=-(-images // 3), size=max(size + 32, 256), seed=0)
        paths = sorted(str(p) for p in data.rglob("*.jpg"))[:images]
        labels = [Path(p).parent.name for p in paths]
        classes = sorted(set(labels))
        y = np.array([classes.index(c) for c in labels])
        workers = loader_workers()
        result = {"backend": backend, "python": platform.python_version(), "keras": keras.__version__,
                  "images": len(paths), "size": size, "decode": decode_throughput(paths, size, workers), "rows": []}
        print(f"decode: {result['decode']['images_per_s']} img/s on {workers} threads", file=sys.stderr)
        for policy in precisions:
            _, hw = setup(backend, "auto", "off" if policy == "float32" else mixed)
            result["hardware"] = hw.to_dict()
            for name in backbones:
                for bs in batch_sizes:
                    keras.backend.clear_session()
                    parts = _build(name, size, weights, len(classes))
                    cached = image_dataset(paths, size=size, batch_size=bs, cache=True, workers=workers)
                    fe = feature_extraction(parts, cached, min(steps, len(cached)))
                    batches = image_dataset(paths, y, size, bs, shuffle=True, cache=True, num_classes=len(classes),
                                            drop_remainder=True, workers=workers)
                    ft = fine_tuning(parts, batches, hw, min(ft_steps, len(batches)))
                    row = {"backbone": name, "weights": "imagenet" if name in weights else "random init",
                           "batch": bs, "precision": hw.precision_policy, "feature_extraction": fe, "fine_tune": ft}
                    result["rows"].append(row)
                    print(f"{name} batch {bs} {hw.precision_policy}: features {fe['images_per_s']} img/s, "
                          f"fine-tune {ft['images_per_s']} img/s, data wait {ft['data_wait_share']:.1%}",
                          file=sys.stderr)
    result["device"] = _device_name(result["hardware"])
    write(out, result)
    return result


def _device_name(hw: dict) -> str:
    if hw["gpus"]:
        try:
            import subprocess
            return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - any failure here has one meaning for the user
            return hw["devices"][0]
    from edge_runtime.benchmark import cpu_name
    return cpu_name()


def write(out: Path, result: dict) -> None:
    from edge_runtime.atomic import write_text
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in result["device"]).strip("_").lower()[:40] + f"_{result['backend']}"
    write_text(out / f"{slug}.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# Training throughput: {result['device']}, Keras {result['keras']} on {result['backend']}", "",
             f"{result['images']} synthetic images at {result['size']} px. Loader decode + resize: "
             f"{result['decode']['images_per_s']} images/s on {result['decode']['threads']} threads.", "",
             "| backbone | weights | batch | precision | features img/s | fine-tune img/s | data wait |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['backbone']} | {r['weights']} | {r['batch']} | {r['precision']} | "
                     f"{r['feature_extraction']['images_per_s']} | {r['fine_tune']['images_per_s']} | "
                     f"{r['fine_tune']['data_wait_share']:.1%} |")
    write_text(out / f"{slug}.md", "\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_train"))
    ap.add_argument("--backend", choices=["tensorflow", "jax"], help="default: $KERAS_BACKEND / Keras' own")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--batch-sizes", default="64,128,256,512")
    ap.add_argument("--precisions", default="float32,mixed", help="float32 and/or mixed (the hardware's policy)")
    ap.add_argument("--weights", action="append", default=[], metavar="BACKBONE=FILE",
                    help="ImageNet weights for a backbone (else random init: same speed)")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=30, help="feature-extraction batches timed")
    ap.add_argument("--fine-tune-steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a CPU-sized run: batch 64, float32, few steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.batch_sizes, a.precisions, a.images, a.steps, a.fine_tune_steps = "64", "float32", 384, 4, 3
    weights = dict(w.split("=", 1) for w in a.weights)
    run(a.out, [int(b) for b in a.batch_sizes.split(",")], a.backbones.split(","), a.precisions.split(","),
        weights, a.images, a.size, steps=a.steps, ft_steps=a.fine_tune_steps, backend=a.backend, mixed="on")


if __name__ == "__main__":
    main()
