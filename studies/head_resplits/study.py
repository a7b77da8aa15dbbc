"""How much of a head's test accuracy is the split? The heads compared over re-drawn splits.

A run's test accuracy comes from one 80/10/10 split: 406 flowers5 test photos, where one photo is
0.25 points. This benchmark re-draws that split many times from the run's own cached features
(every photo's backbone features are the same whichever split it falls in, so no image is
decoded again) and on each draw trains every head the way `edgetl train` would, then scores it
on that draw's test part:

- ``lbfgs``: the default head (``trainer.linear.solve_head``: L2 chosen on validation, refit on
  train+val);
- ``sgd``: the epoch-trained head it replaced (``--head-solver sgd``: Adam, dropout, label
  smoothing, early stop on validation), through the trainer's own code;
- ``reference``: the linear probe the accuracy issue measured against: scikit-learn's L-BFGS
  logistic regression, C chosen on validation from a grid, refit on train+val with that C
  (only when scikit-learn is installed; it comes with MLflow, the ``track`` extra).

It chooses nothing for any run: it measures methods, as ``studies.accuracy.study`` does on one
split. The report gives each head's mean and spread over the draws, the paired difference to
the default, and the run's own split for comparison.

    python -m studies.head_resplits.study RUN [RUN ...] --draws 10 --out studies/head_resplits/results
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from studies.head_selection.study import cached_features
from trainer import linear as L

REFERENCE_C = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
FRACTIONS = (0.8, 0.1)      # train, val; the rest is test (as `edgetl train` splits)
SEED_BASE = 1000


def draw(y: np.ndarray, seed: int) -> np.ndarray:
    """0/1/2 (train/val/test) per photo: a stratified 80/10/10 split."""
    rng = np.random.default_rng(SEED_BASE + seed)
    part = np.full(len(y), 2)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = int(FRACTIONS[0] * len(idx)), int((FRACTIONS[0] + FRACTIONS[1]) * len(idx))
        part[idx[:a]], part[idx[a:b]] = 0, 1
    return part


def trainer_head(solver: str):
    """The trainer's own head phase (``trainer.train.train_head``) with its defaults and the
    given ``--head-solver``, on one draw's cached features."""
    def fit(Xtr, ytr, Xva, yva, n: int) -> L.LinearModel:
        from trainer.config import TrainConfig
        from trainer.model import Parts, make_head
        from trainer.train import train_head

        cfg = TrainConfig(data="", out="", head_solver=solver)
        parts = Parts(model=None, features=None, head=make_head(Xtr.shape[1], n, cfg.dropout, cfg.l2), base=None,
                      feature_width=Xtr.shape[1])
        train_head(cfg, parts, {"train": Xtr, "val": Xva}, {"train": ytr, "val": yva}, n)
        W, b = parts.head.get_layer("logits").get_weights()
        return L.LinearModel(W=W, b=b)
    return fit


def reference_head(Xtr, ytr, Xva, yva, n: int) -> L.LinearModel | None:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = [(LogisticRegression(C=C, max_iter=3000).fit(Xtr, ytr).predict(Xva) == yva).mean() for C in REFERENCE_C]
        C = REFERENCE_C[int(np.argmax(acc))]
        m = LogisticRegression(C=C, max_iter=3000).fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    W, b = m.coef_.T, m.intercept_
    if W.shape[1] == 1:   # two classes: scikit-learn keeps one logit (class 1 against class 0)
        W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
    return L.LinearModel(W=W.astype(np.float32), b=b.astype(np.float32))


HEADS = {"lbfgs": trainer_head("lbfgs"), "sgd": trainer_head("sgd"), "reference": reference_head}


def compare(run: Path, draws: int, heads=tuple(HEADS)) -> dict:
    from trainer.runs import rundir as R

    X, y, n = cached_features(run, ("train", "val", "test"))
    per = {h: [] for h in heads}
    t = time.time()
    for seed in range(draws):
        part = draw(y, seed)
        sets = [(X[part == k], y[part == k]) for k in (0, 1, 2)]
        for h in heads:
            model = HEADS[h](sets[0][0], sets[0][1], sets[1][0], sets[1][1], n)
            if model is not None:
                per[h].append(float((model.scores(sets[2][0]).argmax(1) == sets[2][1]).mean()))
        print(f"{run.name} draw {seed}: " + "  ".join(f"{h} {v[-1]:.4f}" for h, v in per.items() if v), flush=True)
    own = R.read_json(run / R.METRICS)["test"]["accuracy"] if (run / R.METRICS).exists() else None
    out = {"run": run.name, "images": len(y), "test_images_per_draw": int((draw(y, 0) == 2).sum()),
           "draws": draws, "own_split_accuracy": own, "seconds": round(time.time() - t, 1), "heads": {}}
    for h, v in per.items():
        if not v:
            continue
        d = np.array(v) - np.array(per["lbfgs"]) if "lbfgs" in per else None
        out["heads"][h] = {"accuracy": [round(a, 4) for a in v], "mean": round(float(np.mean(v)), 4),
                           "sd": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4),
                           "min": round(min(v), 4), "max": round(max(v), 4),
                           **({"minus_lbfgs_mean": round(float(d.mean()), 4),
                               "minus_lbfgs_sd": round(float(d.std(ddof=1)) if len(d) > 1 else 0.0, 4)}
                              if d is not None else {})}
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Heads over re-drawn 80/10/10 splits of the same cached features", "", f"`{command}`", "",
             "Test accuracy over the draws: mean ± sd [min, max]; the paired difference to the default "
             "(lbfgs) head, draw by draw. The run's own split is the one `edgetl train` drew.", "",
             "| run | draws (test photos each) | own split, lbfgs | head | mean ± sd [min, max] | minus lbfgs, paired |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for h, s in r["heads"].items():
            diff = "" if h == "lbfgs" else f"{s['minus_lbfgs_mean']:+.4f} ± {s['minus_lbfgs_sd']:.4f}"
            own = f"{r['own_split_accuracy']:.4f}" if r["own_split_accuracy"] is not None else ""
            lines.append(f"| {r['run']} | {r['draws']} ({r['test_images_per_draw']}) | {own} | {h} | "
                         f"{s['mean']:.4f} ± {s['sd']:.4f} [{s['min']:.4f}, {s['max']:.4f}] | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished `edgetl train` run folders (their caches are read)")
    ap.add_argument("--draws", type=int, default=10, help="re-drawn splits per run")
    ap.add_argument("--heads", default=",".join(HEADS), help=f"some of {','.join(HEADS)}")
    ap.add_argument("--out", type=Path, default=Path("studies/head_resplits/results"))
    a = ap.parse_args(argv)
    heads = tuple(h for h in a.heads.split(",") if h)
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SystemExit(f"--heads: unknown {unknown}; use some of {','.join(HEADS)}")
    results = [compare(run, a.draws, heads) for run in a.runs]
    command = " ".join(["python -m studies.head_resplits.study", *(argv or sys.argv[1:])])
    from benchmarks.report import save_report
    save_report(a.out, "head_resplits", {"command": command, "results": results}, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
