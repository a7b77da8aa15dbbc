"""Pictures people would rather look at than read: training curves, confusion matrix, per-class
ROC curves, and the Udacity seed's prediction grid (blue title = right, red = wrong)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)


def plot_history(history: dict, path: Path):
    """Accuracy and loss, train vs val, one line per phase (frozen head, fine-tune). Nothing is
    drawn when no phase trained by epochs (the L-BFGS head has a validation curve instead)."""
    if not any(h.get("loss") for h in history.values()):
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, h in history.items():
        if not h.get("loss"):
            continue
        ep = np.arange(1, len(h["loss"]) + 1) + offset
        for ax, key in zip(axes, ("accuracy", "loss")):
            if key in h:
                ax.plot(ep, h[key], label=f"{phase} train")
            if f"val_{key}" in h:
                ax.plot(ep, h[f"val_{key}"], "--", label=f"{phase} val")
        offset = ep[-1]
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.set_xlabel("epoch"); ax.set_title(key); ax.grid(alpha=.3); ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(cm, classes, path: Path):
    plt = _plt()
    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1 + 0.55 * k))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > .5 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title("confusion matrix (test)")
    _save(fig, path)


def plot_roc(y_true, probs, classes, path: Path):
    from .metrics import auc, roc_curve
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    y_true = np.asarray(y_true)
    for i, c in enumerate(classes):
        y = (y_true == i).astype(np.int64)
        if 0 < y.sum() < len(y):
            fpr, tpr = roc_curve(y, np.asarray(probs)[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate"); ax.set_ylabel("true positive rate")
    ax.set_title("ROC per class (one vs rest)"); ax.legend(fontsize=7); ax.grid(alpha=.3)
    _save(fig, path)


def plot_prediction_grid(images, y_true, probs, classes, path: Path, n: int = 30):
    """The first ``n`` test images, titled with the prediction: blue if right, red if wrong."""
    plt = _plt()
    n = min(n, len(images))
    cols = 6
    rows = int(np.ceil(n / cols))
    fig = plt.figure(figsize=(2.1 * cols, 2.3 * rows))
    pred = np.asarray(probs).argmax(axis=1)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i]); ax.axis("off")
        ok = pred[i] == y_true[i]
        ax.set_title(f"{classes[pred[i]]} {np.asarray(probs)[i, pred[i]]:.0%}", fontsize=8,
                     color="tab:blue" if ok else "tab:red")
    _save(fig, path)


def plot_l2_selection(sel: dict, path: Path):
    """The head's validation curve: held-out accuracy (and loss) per L2 strength, the chosen one
    marked, so a user sees whether the choice sat on a plateau or at the grid's edge."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    grid = np.asarray(sel["grid"])
    ax.semilogx(grid, sel["val_accuracy"], "o-", label="held-out accuracy")
    ax.axvline(sel["l2"], color="tab:red", ls=":", label=f"chosen L2 {sel['l2']:.3g}")
    ax.set_xlabel("L2 strength")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.semilogx(grid, sel["val_loss"], "s--", color="tab:gray", alpha=0.7, label="held-out loss")
    ax2.set_ylabel("loss")
    how = f"{sel['folds']}-fold on train+val" if sel["method"] == "k-fold" else "validation split"
    ax.set_title(f"head L2 chosen by {how}; " + ("refit on train+val" if sel["refit"] else "fit on train"),
                 fontsize=9)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    _save(fig, path)
