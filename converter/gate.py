"""The int8 verification gate: does the int8 artifact lose accuracy against its float model?

An accuracy difference on a small split is mostly noise: on 73 test photos one photo is 1.37
points, so "drop <= 1 point" fails any int8 that changes a single answer. The gate therefore
judges the paired predictions, photo by photo. ``lost``: photos float gets right and int8 wrong;
``gained``: the reverse. It fails only when both hold:
  - the drop, 100 * (lost - gained) / n, is over the budget (--max-drop points), and
  - an exact one-sided McNemar test (binomial on the lost + gained discordant photos) says int8
    is worse than float at p < ALPHA: it is not a coin's worth of changed answers.
When the test split is small (under SMALL_SPLIT photos) the validation photos join it, so the
test has more pairs to judge.
"""
from __future__ import annotations

from math import comb

import numpy as np

ALPHA = 0.05
SMALL_SPLIT = 200


def mcnemar_p(lost: int, gained: int) -> float:
    """P(X >= lost) for X ~ Binomial(lost + gained, 1/2): the chance of losing at least this many
    discordant photos if int8 were as good as float."""
    n = lost + gained
    if n == 0 or lost == 0:
        return 1.0
    return sum(comb(n, k) for k in range(lost, n + 1)) / 2 ** n


def judge(y: np.ndarray, float_pred: np.ndarray, int8_pred: np.ndarray, max_drop: float, photos: str) -> dict:
    """The gate's record for the manifest: rule, counts, p-value and verdict."""
    y, f, q = (np.asarray(a) for a in (y, float_pred, int8_pred))
    n = len(y)
    lost = int(((f == y) & (q != y)).sum())
    gained = int(((f != y) & (q == y)).sum())
    drop = round(100 * (lost - gained) / n, 3) if n else 0.0
    p = mcnemar_p(lost, gained)
    failed = drop > max_drop and p < ALPHA
    return {"rule": f"fail when the drop is over {max_drop} points and an exact one-sided McNemar test "
                    f"gives p < {ALPHA}",
            "photos": photos, "n": int(n), "lost": lost, "gained": gained,
            "disagree": int((f != q).sum()), "drop_points": drop, "p_value": round(p, 6),
            "verdict": "failed" if failed else "passed"}


def summary(g: dict) -> str:
    return (f"gate {g['verdict']}: int8 lost {g['lost']} and gained {g['gained']} of {g['n']} {g['photos']} photos "
            f"(drop {g['drop_points']:.2f} points, McNemar p {g['p_value']:.3g})")
