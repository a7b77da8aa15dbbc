"""Accuracy by default: the old epoch-trained head against the exactly solved head (float), and
int8 drop and top-1 agreement with float before and after int8 recovery, per data set x backbone.
Drop and agreement are measured on the test split; recovery chose on the validation split, against
the held-out twin (the head fit on train only) when the shipped head was refit on train+val.

Each row trains once with the defaults (L-BFGS head, L2 chosen on held-out data, refit on
train+val), trains the old head (`--head-solver sgd`) on the same split and features, converts the
new run's model to int8 twice (plain, and with recovery) and reads every number from the run's
own metrics.json and deploy manifests, so the table is what `edgetl train` / `edgetl convert`
record for a user.

    python -m studies.accuracy.study --assets ../shared/assets --out studies/accuracy/results
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROWS = [  # (data set, backbone, alpha, weights file or "imagenet")
    ("flowers5_kaggle227", "mobilenet_v2", 1.0, "weights/mobilenet_v2_1.0_224_imagenet_no_top.h5"),
    ("flowers5_kaggle227", "mobilenet_v2", 0.35, "weights/mobilenet_v2_0.35_224_imagenet_no_top.h5"),
    ("flowers5_kaggle227", "efficientnet_lite0", None, "imagenet"),
    ("cats_and_dogs_filtered", "mobilenet_v2", 1.0, "weights/mobilenet_v2_1.0_224_imagenet_no_top.h5"),
    ("cats_and_dogs_filtered", "mobilenet_v2", 0.35, "weights/mobilenet_v2_0.35_224_imagenet_no_top.h5"),
    ("cats_and_dogs_filtered", "efficientnet_lite0", None, "imagenet"),
    ("flowers5_kaggle227", "efficientnet_lite1", None, "imagenet"),
    ("flowers5_kaggle227", "efficientnet_lite2", None, "imagenet"),
    ("cats_and_dogs_filtered", "efficientnet_lite1", None, "imagenet"),
    ("cats_and_dogs_filtered", "efficientnet_lite2", None, "imagenet"),
]


def _int8(manifest: dict) -> dict:
    return next(a for a in manifest["artifacts"] if a["precision"] == "int8")


def run_row(assets: Path, work: Path, data: str, backbone: str, alpha, weights: str) -> dict:
    from converter.convert import convert
    from trainer.config import TrainConfig
    from trainer.runs import rundir as R
    from trainer.train import train

    name = f"{data}-{backbone}{'-' + str(alpha) if alpha else ''}"
    w = weights if weights == "imagenet" else str(assets / weights)
    new, old = work / name, work / f"{name}-sgd"
    for d in (new, old):
        shutil.rmtree(d, ignore_errors=True)
    t = time.time()
    m_new = train(TrainConfig(data=str(assets / "data" / data), out=str(new), backbone=backbone, alpha=alpha,
                              weights=w))
    t_new = time.time() - t
    # the same split and the same features (deterministic extraction): only the head differs
    m_old = train(TrainConfig(data=str(assets / "data" / data), out=str(old), backbone=backbone, alpha=alpha,
                              weights=w, head_solver="sgd"))
    # measurements, not gates: a drop over convert's default --max-drop is a row's result
    plain = _int8(convert(new, ["int8"], out=new / "deploy-plain", int8_recovery=False, max_drop=100.0))
    rec = _int8(convert(new, ["int8"], out=new / R.DEPLOY, max_drop=100.0))
    q = rec["quantization"]
    return {
        "data": data, "backbone": backbone, "alpha": alpha, "n_test": m_new["test"]["n"],
        "old_head_accuracy": m_old["test"]["accuracy"], "new_head_accuracy": m_new["test"]["accuracy"],
        "head": {k: m_new["head"][k] for k in ("l2", "method", "folds", "refit", "n_fit", "seconds")},
        "train_s": round(t_new, 1),
        "int8_plain": {k: plain["verification"][k] for k in ("accuracy", "drop_points", "agreement",
                                                            "fully_delegated")},
        "int8_recovered": {k: rec["verification"][k] for k in ("accuracy", "drop_points", "agreement",
                                                              "fully_delegated")},
        "float_layers": len(q["float_layers"]), "val_agreement": {"plain": q["plain"]["agreement"],
                                                                 "recovered": q["chosen"]["agreement"],
                                                                 "measured_on": q.get("measured_on")},
        "invoke_ms": q["latency_ms"],
    }


def _val(v: dict) -> str:
    """Validation agreement as recovery measured it; "(twin)": on the head fit on train only."""
    return f"{v['plain']:.4f} / {v['recovered']:.4f}{' (twin)' if v.get('measured_on') == 'held-out twin' else ''}"


def markdown(rows: list[dict]) -> str:
    head = ("| data | backbone | old head | **new head** | L2 (by) | int8 plain drop / agree | "
            "**int8 recovered drop / agree** | recovery's val agree plain / recovered | float layers | "
            "invoke ms plain / recovered |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        p, c = r["int8_plain"], r["int8_recovered"]
        ms = r["invoke_ms"]
        lines.append(
            f"| {r['data']} | {r['backbone']}{' ' + str(r['alpha']) if r['alpha'] else ''} | "
            f"{r['old_head_accuracy']:.4f} | **{r['new_head_accuracy']:.4f}** | {r['head']['l2']:.3g} "
            f"({r['head']['method']}) | {p['drop_points']:+.2f} / {p['agreement']:.4f} | "
            f"**{c['drop_points']:+.2f} / {c['agreement']:.4f}** | {_val(r['val_agreement'])} | {r['float_layers']} | "
            f"{ms['plain_int8']:.2f} / {ms.get('chosen', ms['plain_int8']):.2f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default="../shared/assets")
    ap.add_argument("--out", default="studies/accuracy/results")
    ap.add_argument("--work", default="runs/accuracy-bench", help="Where the runs are kept.")
    ap.add_argument("--only", help="Run only rows whose 'data-backbone' contains this text.")
    a = ap.parse_args(argv)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "accuracy.json"
    done = json.loads(res_file.read_text())["rows"] if res_file.exists() else []
    for data, backbone, alpha, weights in ROWS:
        key = f"{data}-{backbone}-{alpha}"
        if a.only and a.only not in key:
            continue
        row = run_row(Path(a.assets), work, data, backbone, alpha, weights)
        row["command"] = " ".join(["python -m studies.accuracy.study", *(argv or sys.argv[1:])])
        row["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        done = [r for r in done if (r["data"], r["backbone"], r["alpha"]) != (data, backbone, alpha)] + [row]
        from trainer.runs import rundir as R
        R.write_json(res_file, {"command": "python -m studies.accuracy.study --assets ../shared/assets "
                                           "--out studies/accuracy/results [--only KEY]; each row keeps its own",
                                "rows": done})  # after every row: a crash keeps the finished ones
        R.write_text(out / "accuracy.md", markdown(done))
        print(markdown([row]), flush=True)
    print(markdown(done))


if __name__ == "__main__":
    main()
