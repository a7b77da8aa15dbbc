"""The head-selection benchmark judges rules on train+val alone."""
from __future__ import annotations

from studies.head_selection.study import nested
from tests.conftest import feature_run


def _fake_run(tmp_path):
    run = feature_run(tmp_path)
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
