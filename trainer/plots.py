"""Pictures people would rather look at than read: training curves, confusion matrix, per-class
ROC curves, and the Udacity seed's prediction grid (blue title = right, red = wrong)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path):
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(fig)


def plot_history(history: dict, path: Path):
    """Accuracy and loss, train vs val, one line per phase (frozen head, fine-tune). Nothing is
    drawn when no phase trained by epochs (the L-BFGS head has a validation curve instead)."""
    if not any(h.get("loss") for h in history.values()):
        return
    plt = pyplot()
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
    save_figure(fig, path)


def plot_confusion(cm, classes, path: Path):
    plt = pyplot()
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
    save_figure(fig, path)


def plot_roc(y_true, probs, classes, path: Path):
    from .metrics import auc, roc_curve
    plt = pyplot()
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
    save_figure(fig, path)


def plot_prediction_grid(images, y_true, probs, classes, path: Path, n: int = 30):
    """The first ``n`` test images, titled with the prediction: blue if right, red if wrong."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_l2_selection(sel: dict, path: Path):
    """The head's validation curve: held-out accuracy (and loss) per L2 strength, the chosen one
    marked, so a user sees whether the choice sat on a plateau or at the grid's edge."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_compare(cmp, scores, path: Path):
    """Per-class accuracy bars for every run (left) beside their ROC curves (right): binary
    problems plot the second class's score, more classes the micro-averaged one-vs-rest curve."""
    from .metrics import auc, roc_curve
    plt = pyplot()
    classes = list(cmp.per_class)
    k, n = len(classes), len(cmp.names)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * k + 3) + 5, 4.4),
                                  gridspec_kw={"width_ratios": [max(1.4, k / 4), 1]})
    width = 0.8 / n
    x = np.arange(k)
    for i, name in enumerate(cmp.names):
        vals = [cmp.per_class[c]["accuracy"][i] or 0 for c in classes]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=f"{name} ({cmp.overall['accuracy'][i]:.4f})")
        for b, c in zip(bars, classes):
            if i in cmp.per_class_best[c]["accuracy"]:
                ax.annotate("*", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", fontsize=11)
    lo = min(v or 0 for c in classes for v in cmp.per_class[c]["accuracy"])
    ax.set_ylim(max(0.0, lo - 0.1), 1.02)
    ax.set_xticks(x, classes, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=8)
    ax.set_ylabel("test accuracy (recall)")
    ax.set_title("per class (* = best); legend: overall accuracy", fontsize=9)
    ax.legend(fontsize=7, loc="lower left"); ax.grid(axis="y", alpha=.3)
    drawn = False
    for name, s in zip(cmp.names, scores):
        if s is None:
            continue
        y, probs, _ = s
        if probs.shape[1] == 2:
            t, p = (y == 1).astype(np.int64), probs[:, 1]
        else:
            t, p = (np.eye(probs.shape[1])[y]).ravel().astype(np.int64), probs.ravel()
        fpr, tpr = roc_curve(t, p)
        ax2.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
        drawn = True
    # good classifiers differ at small false-positive rates: a log axis shows where
    ax2.set_xscale("log")
    ax2.set_xlim(1e-3, 1)
    ax2.set_xlabel("false positive rate (log)"); ax2.set_ylabel("true positive rate")
    ax2.set_title("ROC (" + ("positive class" if len(classes) == 2 else "micro-average, one vs rest") + ")",
                  fontsize=9)
    if drawn:
        ax2.legend(fontsize=7, loc="lower right")
    else:
        ax2.text(0.5, 0.5, "no saved test scores\n(edgetl eval RUN)", ha="center", va="center")
    ax2.grid(alpha=.3)
    save_figure(fig, path)


def plot_disagreements(d: dict, root: Path, path: Path, max_images: int = 12) -> bool:
    """Two rows of test photos: the ones run A gets right and B wrong, then the reverse, titled
    with the true class and the wrong run's answer. False (nothing drawn) when they agree."""
    from edge_runtime.image import load_image
    sides = [(f"{d['a']} right, {d['b']} wrong", d["a_right_b_wrong"], "b_predicted", d["b"]),
             (f"{d['b']} right, {d['a']} wrong", d["b_right_a_wrong"], "a_predicted", d["a"])]
    cols = min(max_images, max(len(s[1]) for s in sides))
    if cols == 0:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.8), squeeze=False)
    for r, (title, items, key, who) in enumerate(sides):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            it = items[c]
            try:
                ax.imshow(load_image(Path(root) / it["file"], 128))
            except Exception:  # noqa: BLE001 - a photo moved since: its title still says which one it was
                ax.text(0.5, 0.5, "missing", ha="center", va="center")
            ax.set_title(f"{it['true']}\n{who}: {it[key]}", fontsize=7, color="tab:red")
        axes[r][0].text(-0.08, 0.5, f"{title} ({len(items)})", transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
    save_figure(fig, path)
    return True
