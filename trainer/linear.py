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


# Feature matrices up to this size are gathered in RAM once; larger ones are read chunk by chunk
# on every pass of the solver, so its memory stays flat however many images there are.
IN_MEMORY_BYTES = 256 * 2 ** 20
CHUNK_ROWS = 8192


class Rows:
    """The rows of one or more feature matrices (arrays, or the memory-mapped .npy files the
    trainer caches), optionally the subset a boolean mask keeps, met chunk by chunk in a fixed
    order. Small ones are gathered into one float32 array; large ones are read from their files
    with plain reads on every pass (a memory map would leave each page it touched resident in
    this process, so memory would grow with the data after all)."""

    def __init__(self, parts, keep: np.ndarray | None = None, budget: int | None = None,
                 chunk_rows: int | None = None):
        budget = IN_MEMORY_BYTES if budget is None else budget
        chunk_rows = chunk_rows or CHUNK_ROWS
        self.parts = [p if isinstance(p, np.ndarray) else np.asarray(p, np.float32) for p in parts]
        self.keep = None if keep is None else np.asarray(keep, bool)
        self.d = int(self.parts[0].shape[1])
        self.n = int(self.keep.sum()) if self.keep is not None else sum(len(p) for p in self.parts)
        self.budget, self.chunk_rows = budget, chunk_rows
        self._all = None
        if self.n * self.d * 4 <= budget:
            self._all = np.concatenate(list(self._blocks())) if self.n else np.zeros((0, self.d), np.float32)

    def __len__(self) -> int:
        return self.n

    def subset(self, keep: np.ndarray) -> "Rows":
        """The rows (of this one) that ``keep`` marks."""
        full = np.asarray(keep, bool)
        if self.keep is not None:
            full = self.keep.copy()
            full[np.flatnonzero(self.keep)] = np.asarray(keep, bool)
        return Rows(self.parts, full, self.budget, self.chunk_rows)

    def chunks(self):
        """float32 blocks of rows, in order."""
        if self._all is not None:
            yield self._all
        else:
            yield from self._blocks()

    def _blocks(self):
        offset = 0
        for p in self.parts:
            for a in range(0, len(p), self.chunk_rows):
                b = min(a + self.chunk_rows, len(p))
                block = _read_rows(p, a, b)
                if self.keep is not None:
                    block = block[self.keep[offset + a: offset + b]]
                if len(block):
                    yield block
            offset += len(p)


def _read_rows(p: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows a..b of ``p`` as a float32 array: read from the file behind a whole-file memory map,
    sliced otherwise."""
    import os

    name = getattr(p, "filename", None)
    if isinstance(p, np.memmap) and name and p.dtype == np.float32 and p.flags.c_contiguous \
            and os.path.getsize(name) == p.offset + p.nbytes:
        row = p.shape[1] * 4
        with open(name, "rb") as f:
            f.seek(p.offset + a * row)
            return np.fromfile(f, np.float32, (b - a) * p.shape[1]).reshape(b - a, p.shape[1])
    return np.asarray(p[a:b], np.float32)


def as_rows(X) -> Rows:
    return X if isinstance(X, Rows) else Rows([X])


class _Standardiser:
    """Centre every feature and divide all by one global scale. With an unregularised bias the
    centring leaves the solution unchanged and one scale only re-labels the L2 strength, so this
    is the plain linear probe on the backbone's own features (per-feature scaling would instead
    inflate the weights of near-constant channels, and with them int8 noise), but L-BFGS
    converges in a fifth of the iterations. The solver never builds the standardised matrix: the
    scaling is applied to the weights inside each pass (``_objective``)."""

    def __init__(self, X):
        rows = as_rows(X)
        total, sq, count = np.zeros(rows.d), 0.0, 0
        for block in rows.chunks():
            # summed in float64 without a float64 copy of the block (a copy's fresh pages cost
            # more here than the sums: ~0.15 s for flowers5's 3,648 x 1,280 features)
            total += block.sum(axis=0, dtype=np.float64)
            sq += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
            count += len(block)
        self.mu = total / max(count, 1)
        mean_all = float(total.sum()) / max(count * rows.d, 1)
        var = sq / max(count * rows.d, 1) - mean_all ** 2
        scale = float(np.sqrt(max(var, 0.0))) or 1.0
        self.sd = np.full(rows.d, scale)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd).astype(np.float32)

    def fold(self, W: np.ndarray, b: np.ndarray) -> LinearModel:
        """(standardised weights) -> weights on raw features: z = ((x-mu)/sd) W + b."""
        Wr = W / self.sd[:, None]
        return LinearModel(W=Wr.astype(np.float32), b=(b - self.mu @ Wr).astype(np.float32))


class _Identity(_Standardiser):
    def __init__(self, d: int):
        self.mu, self.sd = np.zeros(d), np.ones(d)


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


def _weights_on_raw(std: _Standardiser, W: np.ndarray, b: np.ndarray):
    """Standardised weights (W, b) as float32 weights on raw rows: ((x - mu)/sd) W + b = x Wr + br."""
    Wr = W / std.sd[:, None]
    return Wr.astype(np.float32), b - std.mu @ Wr


def _scores(rows: Rows, std: _Standardiser, W: np.ndarray, b: np.ndarray):
    """(start, block, scores) per chunk for standardised weights (W, b), computed on raw rows."""
    Wr32, br = _weights_on_raw(std, W, b)
    start = 0
    for block in rows.chunks():
        yield start, block, (block @ Wr32).astype(np.float64) + br
        start += len(block)


# Each pass of the solver is two thin matmuls over every row (scores, then the gradient): memory
# bound, so two threads over halves of the rows nearly halve it (BLAS itself stays on one thread).
# Always two halves, whatever the core count, so the sums, and the solution, are the same everywhere.
_pool = None


def _halves_pool():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(2, thread_name_prefix="edgetl-head")
    return _pool


def _pass(rows: Rows, per_block):
    """``per_block(start, block) -> tuple of partial sums`` over all rows: each chunk's rows cut
    in two halves, run on two threads, their sums added in a fixed order."""
    total, start = None, 0
    for chunk in rows.chunks():
        cut = (len(chunk) + 1) // 2
        halves = [(start, chunk[:cut]), (start + cut, chunk[cut:])]
        for part in _halves_pool().map(lambda h: per_block(*h) if len(h[1]) else None, halves):
            if part is not None:
                total = part if total is None else tuple(x + y for x, y in zip(total, part))
        start += len(chunk)
    return total


def _objective(loss: str, rows: Rows, std: _Standardiser, y: np.ndarray, n: int, l2: float, w: np.ndarray):
    """f(theta) and its gradient for theta = [W.ravel(), b] (standardised space); ``w`` are
    per-sample weights normalised to sum to 1."""
    d = rows.d

    def f(theta):
        W = theta[: d * n].reshape(d, n)
        b = theta[d * n:]
        Wr32, br = _weights_on_raw(std, W, b)
        eye = np.eye(n)

        def block_sums(a, block):
            z = (block @ Wr32).astype(np.float64) + br
            yb, wb = y[a:a + len(block)], w[a:a + len(block)]
            onehot = eye[yb]
            if loss == "logistic":
                per, p = _logistic(z, yb)
                g = (p - onehot) * wb[:, None]
            else:
                per, slack = _squared_hinge(z, 2 * onehot - 1)
                g = -2.0 * (2 * onehot - 1) * slack * wb[:, None]
            return float(wb @ per), (block.T @ g.astype(np.float32)).astype(np.float64), g.sum(axis=0)
        val, XtG, gsum = _pass(rows, block_sums)
        val += 0.5 * l2 * float((W * W).sum())
        gW = (XtG - np.outer(std.mu, gsum)) / std.sd[:, None] + l2 * W
        return val, np.concatenate([gW.ravel(), gsum])
    return f


def fit(X, y: np.ndarray, n: int, l2: float, loss: str = "logistic",
        sample_weight: np.ndarray | None = None, init: np.ndarray | None = None,
        *, max_iter: int = 300, tol: float = 1e-5, std: _Standardiser | None = None) -> tuple[np.ndarray, int]:
    """Solve one regularised problem; returns (theta, iterations) in the standardised space of
    ``std`` (None: X is used as it is). ``X``: an array or Rows. Deterministic: full batch, no
    randomness; float32 matmuls, the loss summed in float64."""
    from scipy.optimize import minimize

    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}")
    rows = as_rows(X)
    std = std or _Identity(rows.d)
    y = np.asarray(y, np.int64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    theta0 = np.zeros(rows.d * n + n) if init is None else init
    res = minimize(_objective(loss, rows, std, y, n, l2, w), theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-9})
    return res.x, int(res.nit)


def _split_theta(theta: np.ndarray, d: int, n: int):
    return theta[: d * n].reshape(d, n), theta[d * n:]


def _heldout(loss: str, rows: Rows, std: _Standardiser, y: np.ndarray, theta: np.ndarray, n: int) -> tuple[float, float]:
    """(accuracy, mean loss) of ``theta`` on held-out rows."""
    W, b = _split_theta(theta, rows.d, n)
    hits, total = 0, 0.0
    for a, block, z in _scores(rows, std, W, b):
        yb = y[a:a + len(block)]
        per = _logistic(z, yb)[0] if loss == "logistic" else _squared_hinge(z, 2 * np.eye(n)[yb] - 1)[0]
        hits += int((z.argmax(1) == yb).sum())
        total += float(per.sum())
    return hits / max(len(y), 1), total / max(len(y), 1)


def _path(loss, std, Xtr, ytr, wtr, Xho, yho, *, n, grid, fits=None):
    """Fit along the grid from strong to weak regularisation (warm starts), scoring each on the
    held-out part. Returns per-grid (accuracy, loss) in the grid's order; ``fits`` (a dict), if
    given, receives l2 -> (theta, iterations)."""
    out, theta = {}, None
    for l2 in sorted(grid, reverse=True):
        theta, it = fit(Xtr, ytr, n, l2, loss, sample_weight=wtr, init=theta, std=std)
        out[l2] = _heldout(loss, Xho, std, yho, theta, n)
        if fits is not None:
            fits[l2] = (theta, it)
    return [out[l2] for l2 in grid]


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold index of every sample (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        fold[idx] = np.arange(len(idx)) % k
    return fold


def choose_by_accuracy(acc, lval) -> int:
    """Which L2 of the grid to keep from its held-out (accuracy, loss): the best accuracy; among
    the settings that tie on it, the lowest loss (accuracy is coarse on small splits, the loss
    breaks its ties smoothly). Chosen over other rules by studies/head_selection."""
    acc, lval = np.asarray(acc), np.asarray(lval)
    close = np.nonzero(acc >= acc.max() - 1e-9)[0]
    return int(close[np.argmin(lval[close])])


def sample_weights(y: np.ndarray, weights: dict | None) -> np.ndarray:
    if not weights:
        return np.ones(len(y))
    return np.array([weights[int(c)] for c in y], np.float64)


def solve_head(Ftr, ytr: np.ndarray, Fval, yval: np.ndarray, n: int,
               loss: str = "logistic", class_weights: dict | None = None, *, grid=L2_GRID,
               refit: bool = True, seed: int = 0, method: str = "auto",
               min_val: int = MIN_VAL_FOR_HOLDOUT, folds: int = FOLDS,
               choose=choose_by_accuracy) -> tuple[LinearModel, LinearModel, Selection]:
    """Choose L2 on held-out data, then fit. Returns (model fit on train only, final model,
    selection). The final model is refit on train+val when ``refit`` (else it is the train-only
    fit). ``method``: "validation", "k-fold", or "auto" (k-fold when val has < ``min_val`` images);
    ``choose(accuracies, losses) -> index``: how the held-out scores pick L2.
    ``Ftr``/``Fval``: arrays or memory-mapped feature files; above IN_MEMORY_BYTES they are
    streamed, never loaded whole.
    """
    import time

    from threadpoolctl import threadpool_limits

    t0 = time.time()
    # The matmuls here are thin (n x d by d x classes): BLAS threads cost more in hand-offs than
    # they give (one thread solves flowers5's head in half the time of two on a 2-core box).
    with threadpool_limits(1, user_api="blas"):
        return _solve_head(Ftr, ytr, Fval, yval, n, loss=loss, class_weights=class_weights, grid=grid, refit=refit,
                           seed=seed, method=method, min_val=min_val, folds=folds, choose=choose, t0=t0)


def _solve_head(Ftr, ytr, Fval, yval, n, *, loss, class_weights, grid, refit, seed, method, min_val, folds,
                choose, t0):
    import time

    ytr, yval = np.asarray(ytr, np.int64), np.asarray(yval, np.int64)
    grid = [float(g) for g in grid]
    Rtr = Rows([Ftr])
    Rall = Rows([Ftr, Fval]) if len(yval) else Rtr
    yall = np.concatenate([ytr, yval]) if len(yval) else ytr
    std = _Standardiser(Rall)  # unsupervised: no label of any split, never the test split
    wall = sample_weights(yall, class_weights)
    wtr = sample_weights(ytr, class_weights)
    if method == "auto":
        method = "k-fold" if len(yval) < min_val else "validation"
    if method == "validation" and not len(yval):
        method = "k-fold"
    k = min(folds, int(np.bincount(yall).min())) if method == "k-fold" else 1
    fits: dict = {}
    if method == "k-fold" and k < 2:  # too few images per class to hold any out: a middle setting
        scores = [(np.nan, np.nan)] * len(grid)
        best = grid.index(min(grid, key=lambda g: abs(np.log10(g) + 3)))
    else:
        if method == "validation":
            scores = _path(loss, std, Rtr, ytr, wtr, Rows([Fval]), yval, n=n, grid=grid, fits=fits)
        else:
            fold = stratified_folds(yall, k, seed)
            per_fold = []
            for f in range(k):
                tr, ho = fold != f, fold == f
                per_fold.append(_path(loss, std, Rall.subset(tr), yall[tr], wall[tr], Rall.subset(ho), yall[ho],
                                      n=n, grid=grid))
            scores = [tuple(np.mean([pf[i][j] for pf in per_fold]) for j in range(2)) for i in range(len(grid))]
        best = choose([s[0] for s in scores], [s[1] for s in scores])
    l2 = grid[best]
    d = Rtr.d
    # on the validation path the train-only fit at the chosen l2 is already there
    theta_tr, it = fits[l2] if l2 in fits else fit(Rtr, ytr, n, l2, loss, sample_weight=wtr, std=std)
    train_only = std.fold(*_split_theta(theta_tr, d, n))
    final, n_fit = train_only, len(ytr)
    if refit and len(yval):
        # The penalty is a prior on W: per image it shrinks as images are added (l2 is per mean loss).
        theta_all, it = fit(Rall, yall, n, l2 * len(ytr) / len(yall), loss, sample_weight=wall,
                            init=theta_tr, std=std)
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
