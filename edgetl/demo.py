"""`edgetl demo`: the whole pipeline on the embedded synthetic dataset, offline, in minutes on a
laptop CPU: make data -> inspect -> train -> evaluate -> convert -> predict.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from edge_runtime.errors import UserError
from trainer.runs import rundir as R


def _say(msg: str):
    print(msg, flush=True)


def run_demo(out: Path, per_class: int = 60, backbone: str = "efficientnet_lite0", alpha: float | None = None,
             size: int | None = 128, weights: str = "imagenet", seed: int = 0, *, fine_tune: bool = False) -> dict:
    from trainer.backbones import BackboneError
    from trainer.config import TrainConfig
    from trainer.data import load_dataset
    from trainer.data.inspect import format_report, inspect_dataset
    from trainer.data.synthetic import generate
    from trainer.train import train

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; pass another --out or remove it")
    t0 = time.time()
    data = out / "data"
    _say(f"[1/3] synthetic fabric textures -> {data}")
    generate(data, per_class=per_class, size=128, seed=seed)
    _say(format_report(inspect_dataset(load_dataset(data))))

    _say(f"[2/3] train {backbone} on it -> {out / 'run'}")
    cfg = TrainConfig(data=str(data), out=str(out / "run"), backbone=backbone, alpha=alpha, size=size,
                      weights=weights, seed=seed, fine_tune=fine_tune, fine_tune_epochs=3)
    try:
        metrics = train(cfg)
    except BackboneError as e:
        if weights != "imagenet":
            raise
        print(f"note: {e}\nnote: continuing with random init (--weights none): a frozen random backbone "
              "gives near-chance accuracy; pass --weights PATH for a real result", file=sys.stderr)
        cfg.weights = "none"
        metrics = train(cfg)
    t = metrics["test"]
    _say(f"held-out test: accuracy {t['accuracy']:.3f}, class-averaged {t['class_avg_accuracy']:.3f}; "
         f"plots in {out / 'run' / 'plots'}")
    from converter.convert import convert
    from edge_runtime import Classifier

    _say(f"[3/3] convert to fp32 + int8 -> {out / 'run' / 'deploy'}, then classify on the edge runtime")
    convert(out / "run", ["fp32", "int8"], max_drop=100.0)
    clf = Classifier(out / "run" / R.DEPLOY)
    sample = sorted((data / "leopard").glob("*.jpg"))[0]
    _say(f"edge-predict {sample.name}: " + ", ".join(f"{l} {s:.2f}" for l, s in clf.classify(sample, 3)))
    _say(f"demo finished in {time.time() - t0:.0f}s")
    _say(f"next: edge-predict {out / 'run' / 'deploy'} PHOTO.jpg | edge-serve {out / 'run' / 'deploy'} | "
         f"edgetl explain {out / 'run'} PHOTO.jpg | your own photos: edgetl data inspect DATA, then "
         f"edgetl train DATA --out runs/mine")
    return metrics
