"""The re-drawn-splits benchmark: how much of a head's test accuracy is the split it was given."""
from __future__ import annotations

import numpy as np
import pytest

from studies.head_resplits.study import compare, draw
from tests.conftest import feature_run


def _fake_run(tmp_path, classes):
    """Overlapping classes (no head is perfect) with all three splits cached."""
    return feature_run(tmp_path, classes, (("train", 48), ("val", 6), ("test", 6)), spread=1.2)


def test_each_draw_is_a_stratified_80_10_10_split_of_its_own():
    y = np.repeat([0, 1, 2], [100, 50, 30])
    a, b = draw(y, 0), draw(y, 1)
    for c, n in ((0, 100), (1, 50), (2, 30)):
        assert np.bincount(a[y == c], minlength=3).tolist() == [int(0.8 * n), int(0.9 * n) - int(0.8 * n),
                                                                 n - int(0.9 * n)]
    assert np.array_equal(a, draw(y, 0)) and not np.array_equal(a, b)


@pytest.mark.parametrize("classes", [("a", "b", "c"), ("cat", "dog")])
def test_every_head_is_trained_and_scored_on_each_draw(tmp_path, classes):
    r = compare(_fake_run(tmp_path, classes), draws=2)
    k = len(classes)
    assert r["images"] == 60 * k and r["test_images_per_draw"] == 6 * k and r["draws"] == 2
    assert set(r["heads"]) == {"lbfgs", "sgd", "reference"}
    for h, s in r["heads"].items():
        assert len(s["accuracy"]) == 2 and s["min"] <= s["mean"] <= s["max"]
        assert s["mean"] > 1 / k + 0.15            # learned something: well above chance
        if h != "lbfgs":
            assert "minus_lbfgs_mean" in s
