"""Which inner layers should the frozen head see beside the final features? (the registry's taps)

A backbone's last layer is tuned to ImageNet's 1,000 classes; the stages before it still hold
mid-level texture and shape that a new task (flowers, say) can use. `edgetl train` pools the
layers a backbone's registry entry names (``Backbone.taps``) beside its final features. This
benchmark is how those names were chosen, and lets anyone re-check them:

1. a finished run's photos (all three splits) go once through the backbone with *every*
   candidate layer tapped (the trainer's own model, ``trainer.model.build``), so each candidate
   set is a slice of one feature matrix;
2. ``inner``: the run's train+val photos only are re-split 80/10/10 ``--draws`` times; on each
   draw every candidate trains the default head (the trainer's ``train_head``) and is scored on
   that draw's held-out part. The run's own test split is never read by this choice;
3. ``own split``: each candidate trained on the run's train/val and scored on its test split,
   shown for information only (one split of a few hundred photos: one photo is 0.25 points).

The registry keeps, per backbone family, the candidate with the best mean paired gain over the
final features in step 2, provided its int8 artifact still reaches the converter's agreement
target on the held-out twin's validation images (`studies.accuracy.study`'s "recovery's val agree"
column); EfficientNet-Lite's best candidate did not, so it keeps the final features alone.

    python -m studies.feature_taps.study RUN [RUN ...] --draws 10 --out studies/feature_taps/results
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from studies.head_resplits.study import draw, trainer_head

# Per family: candidate tap sets, named by where they sit in the backbone.
CANDIDATES = {
    "mobilenet_v2": {
        "final": (),
        "last block's expansion": ("block_16_expand_relu",),
        "end of the 7x7 stage": ("block_15_add",),
        "ends of the 7x7 and 14x14 stages": ("block_15_add", "block_12_add"),
    },
}


def lite_candidates(variant: int) -> dict[str, tuple[str, ...]]:
    """EfficientNet-Lite's candidates, named from its stage plan (deeper variants repeat the 7x7
    and 14x14 stages more: Lite0 ends them in block6d / block5c, Lite1 and Lite2 in block6e / block5d)."""
    from trainer.backbones.efficientnet_lite import stage_plan

    plan = stage_plan(variant)
    end = {i + 1: f"block{i + 1}{chr(ord('a') + repeats - 1)}_add" for i, (repeats, *_) in enumerate(plan)}
    return {"final": (), "last block's expansion": ("block7a_expand_activation",),
            "end of the 7x7 stage": (end[6],), "ends of the 7x7 and 14x14 stages": (end[6], end[5])}


def candidates(spec) -> dict[str, tuple[str, ...]]:
    if spec.family == "efficientnet_lite":
        return lite_candidates(int(spec.name[-1]))
    return CANDIDATES[spec.family]


def tapped_features(run: Path, layers: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Every photo of a run (train, val, test in split order) through the backbone with ``layers``
    tapped: (features, labels, split 0/1/2, column slice per layer with "final" first)."""
    import keras

    from edge_runtime.image import load_image
    from studies.head_selection.study import split_list
    from trainer.backbones import get_backbone
    from trainer.model import build
    from trainer.runs import rundir as R

    t = R.read_json(run / R.CONFIG)["train"]
    labels = (run / "labels.txt").read_text().splitlines()
    spec = get_backbone(t["backbone"])
    parts = build(spec, t["size"], t["alpha"], t["weights"], len(labels), taps=layers)
    lists = [split_list(run, split, labels) for split in ("train", "val", "test")]
    paths = [p for ps, _ in lists for p in ps]
    y = np.concatenate([ys for _, ys in lists])
    part = np.concatenate([np.full(len(ys), k) for k, (_, ys) in enumerate(lists)])
    X = np.concatenate([parts.features.predict(
        np.stack([load_image(p, t["size"], t["resize"]) for p in paths[i:i + 64]]).astype(np.float32), verbose=0)
        for i in range(0, len(paths), 64)])
    widths = [spec.feature_width(t["alpha"])] + [int(parts.base.get_layer(n).output.shape[-1]) for n in layers]
    edges = np.cumsum([0] + widths)
    cols = {n: slice(int(a), int(b)) for n, a, b in zip(("final", *layers), edges[:-1], edges[1:])}
    keras.backend.clear_session()
    return X, y, part, cols


def _score(fit, X, y, n, tr, va, te) -> float:
    return float((fit(X[tr], y[tr], X[va], y[va], n).scores(X[te]).argmax(1) == y[te]).mean())


def compare(run: Path, draws: int) -> dict:
    from trainer.backbones import get_backbone
    from trainer.runs import rundir as R

    spec = get_backbone(R.read_json(run / R.CONFIG)["train"]["backbone"])
    cands = candidates(spec)
    layers = tuple(dict.fromkeys(n for c in cands.values() for n in c))
    t0 = time.time()
    X, y, part, cols = tapped_features(run, layers)
    n = int(y.max()) + 1
    fit = trainer_head("lbfgs")
    pick = {c: np.concatenate([np.arange(X.shape[1])[cols[k]] for k in ("final", *ls)]) for c, ls in cands.items()}
    own = {c: _score(fit, X[:, pick[c]], y, n, part == 0, part == 1, part == 2) for c in cands}
    keep = np.flatnonzero(part < 2)   # the run's test photos take no part in the choice
    per = {c: [] for c in cands}
    for s in range(draws):
        redrawn = np.full(len(y), -1)          # -1: the run's test photos, in no part
        redrawn[keep] = draw(y[keep], s)
        masks = [redrawn == k for k in (0, 1, 2)]
        for c in cands:
            per[c].append(_score(fit, X[:, pick[c]], y, n, *masks))
        print(f"{run.name} draw {s}: " + "  ".join(f"{c} {v[-1]:.4f}" for c, v in per.items()), flush=True)
    base = np.array(per["final"])
    out = {"run": run.name, "family": spec.family, "registry_taps": list(spec.taps), "draws": draws,
           "held_out_per_draw": int((draw(y[keep], 0) == 2).sum()), "own_test_images": int((part == 2).sum()),
           "seconds": round(time.time() - t0, 1), "candidates": {}}
    for c, v in per.items():
        d = np.array(v) - base
        out["candidates"][c] = {
            "taps": list(cands[c]), "width": int(len(pick[c])), "inner_accuracy": [round(a, 4) for a in v],
            "inner_mean": round(float(np.mean(v)), 4), "gain_mean": round(float(d.mean()), 4),
            "gain_sd": round(float(d.std(ddof=1)) if len(d) > 1 else 0.0, 4),
            "draws_better": int((d > 0).sum()), "draws_worse": int((d < 0).sum()),
            "own_split_accuracy": round(own[c], 4)}
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Inner layers beside the final features: nested re-splits of train+val", "", f"`{command}`", "",
             "Held-out accuracy of the default head over re-drawn 80/10/10 splits of each run's train+val "
             "photos (its test split is not used), paired against the final features alone. The last "
             "column is the run's own test split, for information only: it chose nothing.", "",
             "| run | taps | width | mean held-out acc | gain vs final, paired (better/worse draws) | "
             "registry | own test split |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for c, s in r["candidates"].items():
            reg = "✓" if s["taps"] == r["registry_taps"] else ""
            lines.append(f"| {r['run']} | {c} ({', '.join(s['taps']) or 'none'}) | {s['width']} | "
                         f"{s['inner_mean']:.4f} | {s['gain_mean']:+.4f} ± {s['gain_sd']:.4f} "
                         f"({s['draws_better']}/{s['draws_worse']}) | {reg} | {s['own_split_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished `edgetl train` run folders")
    ap.add_argument("--draws", type=int, default=10, help="re-drawn splits of train+val per run")
    ap.add_argument("--out", type=Path, default=Path("studies/feature_taps/results"))
    a = ap.parse_args(argv)
    results = [compare(run, a.draws) for run in a.runs]
    command = " ".join(["python -m studies.feature_taps.study", *(argv or sys.argv[1:])])
    from benchmarks.report import save_report
    save_report(a.out, "feature_taps", {"command": command, "results": results}, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
