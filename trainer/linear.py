"""The default head: an exactly solved linear classifier on cached backbone features.

A frozen backbone leaves a convex problem (a linear model on a few thousand fixed vectors), so
the head is solved to convergence with full-batch L-BFGS instead of being trained by SGD for an
early-stopped number of epochs. Its one hyper-parameter, the L2 strength, is chosen by held-out
accuracy (the validation split, or k-fold cross-validation over train+val when validation is too
small to tell settings apart), and the chosen setting is then refit on every labelled image that
is not in the test split. The test split is never read here.

Two losses share the machinery: multinomial logistic regression (softmax head) and the
one-vs-rest squared hinge (the linear-SVM head, L2-SVM in the primal). Features are standardised
for the solver and the scaling is folded back into the weights, so the result is one plain
``features @ W + b`` that sits in the Keras model and converts like any other Dense layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LOSSES = ("logistic", "squared-hinge")
# L2 strengths tried (on standardised features; objective = mean loss + l2/2 * |W|^2).
L2_GRID = tuple(float(x) for x in np.logspace(-4, 0, 9))
# Validation splits smaller than this (images) cannot separate neighbouring settings reliably:
# one image is already 0.5 points at 200, so k-fold over train+val decides instead.
MIN_VAL_FOR_HOLDOUT = 400
FOLDS = 5


@dataclass
class LinearModel:
    """scores = X @ W + b, in the original (unstandardised) feature space."""
    W: np.ndarray
    b: np.ndarray

    def scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.W + self.b


@dataclass
class Selection:
    """What the solver chose and why: recorded in the run's metrics.json."""
    loss: str
    l2: float
    method: str                    # "validation" | "k-fold"
    folds: int
    grid: list[float]
    val_accuracy: list[float]      # held-out accuracy per grid value
    val_loss: list[float]          # held-out mean loss per grid value (tie-break)
    refit: bool                    # refit on train+val with the chosen l2
    n_fit: int                     # images in the final fit
    iterations: int
    class_weights: dict | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Standardiser:
    """Centre every feature and divide all by one global scale. With an unregularised bias the
    centring leaves the solution unchanged and one scale only re-labels the L2 strength, so this
    is the plain linear probe on the backbone's own features (per-feature scaling would instead
    inflate the weights of near-constant channels, and with them int8 noise), but L-BFGS
    converges in a fifth of the iterations."""

    def __init__(self, X: np.ndarray):
        self.mu = X.mean(axis=0)
        scale = float(X.std()) or 1.0
        self.sd = np.full(X.shape[1], scale)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd).astype(np.float32)

    def fold(self, W: np.ndarray, b: np.ndarray) -> LinearModel:
        """(standardised weights) -> weights on raw features: z = ((x-mu)/sd) W + b."""
        Wr = W / self.sd[:, None]
        return LinearModel(W=Wr.astype(np.float32), b=(b - self.mu @ Wr).astype(np.float32))


def _logistic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cross-entropy of scores ``z`` for labels ``y``, and the softmax of ``z``."""
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(y)), y], np.exp(z - lse[:, None])


def _squared_hinge(z: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample one-vs-rest squared hinge (``sign``: +1 for the true class, -1 elsewhere), and
    the slack of each score."""
    slack = np.maximum(0.0, 1.0 - sign * z)
    return (slack ** 2).sum(axis=1), slack


def _objective(loss: str, X: np.ndarray, y: np.ndarray, n: int, l2: float, w: np.ndarray):
    """f(theta) and its gradient for theta = [W.ravel(), b]; ``w`` are per-sample weights
    normalised to sum to 1."""
    d = X.shape[1]
    onehot = np.eye(n)[y]
    sign = 2 * onehot - 1

    def f(theta):
        W = theta[: d * n].reshape(d, n)
        b = theta[d * n:]
        z = (X @ W.astype(np.float32)).astype(np.float64) + b
        if loss == "logistic":
            per, p = _logistic(z, y)
            g = (p - onehot) * w[:, None]
        else:
            per, slack = _squared_hinge(z, sign)
            g = -2.0 * sign * slack * w[:, None]
        val = float(w @ per) + 0.5 * l2 * float((W * W).sum())
        gW = (X.T @ g.astype(np.float32)).astype(np.float64) + l2 * W
        return val, np.concatenate([gW.ravel(), g.sum(axis=0)])
    return f


def fit(X: np.ndarray, y: np.ndarray, n: int, l2: float, loss: str = "logistic",
        sample_weight: np.ndarray | None = None, init: np.ndarray | None = None,
        max_iter: int = 300, tol: float = 1e-5) -> tuple[np.ndarray, int]:
    """Solve one regularised problem on (already standardised) X; returns (theta, iterations).
    Deterministic: full batch, no randomness; float32 matmuls, the loss summed in float64."""
    from scipy.optimize import minimize

    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}")
    X = np.asarray(X, np.float32)   # the two matmuls dominate: float32 halves their time
    y = np.asarray(y, np.int64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    theta0 = np.zeros(X.shape[1] * n + n) if init is None else init
    res = minimize(_objective(loss, X, y, n, l2, w), theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-9})
    return res.x, int(res.nit)


def _split_theta(theta: np.ndarray, d: int, n: int):
    return theta[: d * n].reshape(d, n), theta[d * n:]


def _heldout(loss: str, Xs: np.ndarray, y: np.ndarray, theta: np.ndarray, n: int) -> tuple[float, float]:
    """(accuracy, mean loss) of ``theta`` on held-out standardised features."""
    W, b = _split_theta(theta, Xs.shape[1], n)
    z = Xs @ W + b
    per = _logistic(z, y)[0] if loss == "logistic" else _squared_hinge(z, 2 * np.eye(n)[y] - 1)[0]
    return float((z.argmax(1) == y).mean()), float(per.mean())


def _path(loss, Xtr, ytr, wtr, Xho, yho, n, grid):
    """Fit along the grid from strong to weak regularisation (warm starts), scoring each on the
    held-out part. Returns per-grid (accuracy, loss) in the grid's order."""
    out, theta = {}, None
    for l2 in sorted(grid, reverse=True):
        theta, _ = fit(Xtr, ytr, n, l2, loss, sample_weight=wtr, init=theta)
        out[l2] = _heldout(loss, Xho, yho, theta, n)
    return [out[l2] for l2 in grid]


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold index of every sample (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _choose(grid, acc, lval) -> int:
    """Best held-out accuracy; among the settings that tie on it, the lowest held-out loss
    (accuracy is coarse on small splits, the loss breaks its ties smoothly)."""
    acc, lval = np.asarray(acc), np.asarray(lval)
    close = np.nonzero(acc >= acc.max() - 1e-9)[0]
    return int(close[np.argmin(lval[close])])


def sample_weights(y: np.ndarray, weights: dict | None) -> np.ndarray:
    if not weights:
        return np.ones(len(y))
    return np.array([weights[int(c)] for c in y], np.float64)


def solve_head(Ftr: np.ndarray, ytr: np.ndarray, Fval: np.ndarray, yval: np.ndarray, n: int,
               loss: str = "logistic", class_weights: dict | None = None, grid=L2_GRID,
               refit: bool = True, seed: int = 0, method: str = "auto",
               min_val: int = MIN_VAL_FOR_HOLDOUT, folds: int = FOLDS) -> tuple[LinearModel, LinearModel, Selection]:
    """Choose L2 on held-out data, then fit. Returns (model fit on train only, final model,
    selection). The final model is refit on train+val when ``refit`` (else it is the train-only
    fit). ``method``: "validation", "k-fold", or "auto" (k-fold when val has < ``min_val`` images).
    """
    import time

    t0 = time.time()
    Ftr, Fval = np.asarray(Ftr, np.float64), np.asarray(Fval, np.float64)
    ytr, yval = np.asarray(ytr, np.int64), np.asarray(yval, np.int64)
    grid = [float(g) for g in grid]
    Xall = np.concatenate([Ftr, Fval]) if len(yval) else Ftr
    yall = np.concatenate([ytr, yval]) if len(yval) else ytr
    std = _Standardiser(Xall)  # unsupervised: no label of any split, never the test split
    wall = sample_weights(yall, class_weights)
    Xtr, wtr = std(Ftr), sample_weights(ytr, class_weights)
    if method == "auto":
        method = "k-fold" if len(yval) < min_val else "validation"
    if method == "validation" and not len(yval):
        method = "k-fold"
    k = min(folds, int(np.bincount(yall).min())) if method == "k-fold" else 1
    if method == "k-fold" and k < 2:  # too few images per class to hold any out: a middle setting
        scores = [(np.nan, np.nan)] * len(grid)
        best = grid.index(min(grid, key=lambda g: abs(np.log10(g) + 3)))
    else:
        if method == "validation":
            scores = _path(loss, Xtr, ytr, wtr, std(Fval), yval, n, grid)
        else:
            fold = _folds(yall, k, seed)
            per_fold = []
            for f in range(k):
                tr, ho = fold != f, fold == f
                per_fold.append(_path(loss, std(Xall[tr]), yall[tr], wall[tr], std(Xall[ho]), yall[ho], n, grid))
            scores = [tuple(np.mean([pf[i][j] for pf in per_fold]) for j in range(2)) for i in range(len(grid))]
        best = _choose(grid, [s[0] for s in scores], [s[1] for s in scores])
    l2 = grid[best]
    d = Ftr.shape[1]
    theta_tr, it = fit(Xtr, ytr, n, l2, loss, sample_weight=wtr)
    train_only = std.fold(*_split_theta(theta_tr, d, n))
    final, n_fit = train_only, len(ytr)
    if refit and len(yval):
        # The penalty is a prior on W: per image it shrinks as images are added (l2 is per mean loss).
        theta_all, it = fit(std(Xall), yall, n, l2 * len(ytr) / len(yall), loss, sample_weight=wall,
                            init=theta_tr)
        final, n_fit = std.fold(*_split_theta(theta_all, d, n)), len(yall)
    sel = Selection(loss=loss, l2=l2, method=method, folds=k, grid=grid,
                    val_accuracy=[float(s[0]) for s in scores], val_loss=[float(s[1]) for s in scores],
                    refit=bool(refit and len(yval)), n_fit=n_fit, iterations=it,
                    class_weights=class_weights, seconds=round(time.time() - t0, 3))
    return train_only, final, sel


def calibrate_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """One temperature t so softmax(t * scores) has the lowest NLL on ``y`` (argmax unchanged):
    turns SVM margins into probabilities."""
    temps = np.logspace(-1, 2, 61)
    nll = [_logistic(scores * t, y)[0].mean() for t in temps]
    return float(temps[int(np.argmin(nll))])
