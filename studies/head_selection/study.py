"""Which rule should choose the head's L2? A nested cross-validation on train+val only.

The default head (trainer.linear) picks its L2 strength on held-out data and refits. Whether a
different selection rule would generalise better must not be judged on the test split (that
would select on it), so this benchmark asks train+val alone: an outer stratified 5-fold split of
a finished run's cached train+val features; inside each outer training part, every rule carves
its own held-out data, chooses L2 and refits exactly as ``solve_head`` does; the outer fold then
scores the result. The rule with the most outer-fold hits generalises best on that data.

Rules: ``validation`` (an 11 % held-out part, as the split gives) or ``k-fold`` (5 folds over
the whole inner part), each choosing by held-out accuracy with loss breaking ties (the default
rule) or by held-out loss alone.

    python -m studies.head_selection.study RUN [RUN ...] --out studies/head_selection/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from trainer import linear as L

RULES = ("validation+accuracy", "validation+loss", "k-fold+accuracy", "k-fold+loss")
OUTER_FOLDS, OUTER_SEED = 5, 12345


def cached_train_val(run: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """A finished run's cached train and val features with their labels (the test split's cache
    is never opened)."""
    return cached_features(run, ("train", "val"))


def split_list(run: Path, split: str, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """A run's split list (RUN/split/<split>.tsv): the photos' paths and their class indices."""
    from edge_runtime.filelist import read_file_list

    items = read_file_list(run / "split" / f"{split}.tsv")
    return [p for p, _ in items], np.array([labels.index(c) for _, c in items], np.int64)


def cached_features(run: Path, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """A finished run's cached features of ``splits`` (in that order) with their labels, and the
    number of classes."""
    labels = (run / "labels.txt").read_text().splitlines()
    X, y = [], []
    for split in splits:
        found = sorted((run / "cache").glob(f"features_{split}_*.npy"))
        if len(found) != 1:   # none, or caches of older settings beside the current one
            raise SystemExit(f"{run}/cache: expected one features_{split}_*.npy, found {len(found)}; "
                             "give a finished run folder (its cache kept)")
        X.append(np.asarray(np.load(found[0], mmap_mode="r"), np.float32))
        y.append(split_list(run, split, labels)[1])
    X, y = np.concatenate(X), np.concatenate(y)
    if len(X) != len(y):
        raise SystemExit(f"{run}: cached features ({len(X)}) do not match the split lists ({len(y)})")
    return X, y, len(labels)


def fit_rule(rule: str, X: np.ndarray, y: np.ndarray, n: int) -> tuple[L.LinearModel, float]:
    """``solve_head`` under one rule on (X, y); returns the refit model and the chosen L2."""
    method, criterion = rule.split("+")
    held = L.stratified_folds(y, 9, 0) == 0           # about 11 %: the validation part a split would give
    _, final, sel = L.solve_head(X[~held], y[~held], X[held], y[held], n, method=method, choose=CHOOSERS[criterion])
    return final, sel.l2


def choose_by_loss(acc, lval) -> int:
    """The rule the product did not keep: the lowest held-out loss alone."""
    return int(np.argmin(np.asarray(lval)))


CHOOSERS = {"accuracy": L.choose_by_accuracy, "loss": choose_by_loss}


def nested(run: Path, rules=RULES) -> list[dict]:
    X, y, n = cached_train_val(run)
    outer = L.stratified_folds(y, OUTER_FOLDS, OUTER_SEED)
    rows = []
    for rule in rules:
        t, hits, l2s = time.time(), 0, []
        for f in range(OUTER_FOLDS):
            tr, ho = outer != f, outer == f
            model, l2 = fit_rule(rule, X[tr], y[tr], n)
            hits += int((model.scores(X[ho]).argmax(1) == y[ho]).sum())
            l2s.append(l2)
        rows.append({"run": run.name, "rule": rule, "hits": hits, "n": len(y), "accuracy": round(hits / len(y), 4),
                     "l2_per_outer_fold": [round(v, 5) for v in l2s], "seconds": round(time.time() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    runs = list(dict.fromkeys(r["run"] for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    cell = {(r["run"], r["rule"]): r for r in rows}
    lines = ["# Head L2 selection rules: nested 5-fold CV on train+val (test split never read)", "",
             f"`{command}`", "", "Outer-fold hits / images (accuracy); L2 chosen in each outer fold.", "",
             "| rule | " + " | ".join(runs) + " | all |", "|---|" + "---|" * (len(runs) + 1)]
    for rule in rules:
        cells = [f"{cell[(r, rule)]['hits']}/{cell[(r, rule)]['n']} ({cell[(r, rule)]['accuracy']:.4f}) "
                 f"L2 {cell[(r, rule)]['l2_per_outer_fold']}" for r in runs]
        total = sum(cell[(r, rule)]["hits"] for r in runs)
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished `edgetl train` run folders (their caches are read)")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--out", type=Path, default=Path("studies/head_selection/results"))
    a = ap.parse_args(argv)
    rows = [r for run in a.runs for r in nested(run, a.rules.split(","))]
    command = " ".join(["python -m studies.head_selection.study", *(argv or sys.argv[1:])])
    from benchmarks.report import save_report
    save_report(a.out, "head_selection", {"command": command, "rows": rows}, markdown(rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
