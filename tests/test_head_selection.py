"""The head-selection benchmark judges rules on train+val alone."""
from __future__ import annotations

import numpy as np

from benchmarks.head_selection import nested


def _fake_run(tmp_path, n_per_class=60, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    (run / "split").mkdir(parents=True)
    (run / "cache").mkdir()
    (run / "labels.txt").write_text("\n".join(classes) + "\n")
    centres = rng.normal(0, 3, (len(classes), 16))
    for split, count in (("train", n_per_class), ("val", n_per_class // 4)):
        names = [(f"{c}/{split}{i}.jpg", c) for c in classes for i in range(count)]
        (run / "split" / f"{split}.tsv").write_text(f"# root\t{tmp_path}\n" + "".join(f"{p}\t{c}\n" for p, c in names))
        X = np.stack([centres[classes.index(c)] + rng.normal(0, 1, 16) for _, c in names]).astype(np.float32)
        np.save(run / "cache" / f"features_{split}_0.npy", X)
    # the test split's cache is not even a valid array file: reading it would fail
    (run / "cache" / "features_test_0.npy").write_bytes(b"not features")
    return run


def test_rules_are_scored_by_outer_folds_of_train_and_val_without_the_test_cache(tmp_path):
    rows = nested(_fake_run(tmp_path), ["validation+accuracy", "k-fold+loss"])
    assert [r["rule"] for r in rows] == ["validation+accuracy", "k-fold+loss"]
    for r in rows:
        assert r["n"] == 3 * 60 + 3 * 15            # every train+val image held out exactly once
        assert r["accuracy"] > 0.9                   # well-separated classes: each rule learns them
        assert len(r["l2_per_outer_fold"]) == 5
