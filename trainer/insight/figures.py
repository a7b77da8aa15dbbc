"""The pictures of the insight tools, saved atomically as PNG (the arrays come from the API)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import pyplot, save_figure


def _overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    colours = pyplot().get_cmap("jet")(heatmap)[..., :3]
    return np.clip((1 - alpha) * image / 255.0 + alpha * colours, 0, 1)


def _title(top) -> str:
    return "\n".join(f"{name} {p:.2f}" for name, p in top)


def explanation_figure(exp, classes, path: Path) -> Path:
    """input | heatmap | overlay, titled with the top-3 classes and the class explained."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.9))
    axes[0].imshow(exp.image)
    axes[0].set_title(Path(exp.source).name or "input", fontsize=9)
    axes[1].imshow(exp.heatmap, cmap="jet", vmin=0, vmax=1)
    x, y = exp.peak
    axes[1].plot([x], [y], "w+", markersize=12, mew=2)
    axes[1].set_title(f"Grad-CAM for {classes[exp.class_index]}\n{exp.layer}", fontsize=9)
    axes[2].imshow(_overlay(exp.image, exp.heatmap))
    axes[2].set_title(_title(exp.top), fontsize=9)
    for a in axes:
        a.axis("off")
    save_figure(fig, path)
    return path


def misclassified_figure(items, classes, path: Path, cols: int = 4) -> Path:
    """One overlay per wrong test photo, titled true -> predicted (probability)."""
    plt = pyplot()
    rows = max(1, int(np.ceil(len(items) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for a in axes.flat:
        a.axis("off")
    for a, (exp, true) in zip(axes.flat, items):
        a.imshow(_overlay(exp.image, exp.heatmap))
        p = exp.probabilities[exp.class_index]
        a.set_title(f"{Path(exp.source).name}\ntrue {classes[true]} -> {classes[exp.class_index]} {p:.2f}",
                    fontsize=8, color="red")
    fig.suptitle("Where the model looked when it was wrong (Grad-CAM of the predicted class)")
    save_figure(fig, path)
    return path


def activations_figure(image: np.ndarray, layers, path: Path, cols: int = 8) -> Path:
    """The photo, then per layer a grid of its most active channels."""
    plt = pyplot()
    per = max(len(l.channels) for l in layers)
    grid_rows = [int(np.ceil(per / cols)) for _ in layers]
    fig = plt.figure(figsize=(1.6 * cols, 1.8 + 1.7 * sum(grid_rows)))
    total = 1 + sum(grid_rows)
    ax = fig.add_subplot(total, cols, 1)
    ax.imshow(image)
    ax.set_title("input", fontsize=8)
    ax.axis("off")
    row = 1
    for lm, nrows in zip(layers, grid_rows):
        for k, c in enumerate(lm.channels):
            a = fig.add_subplot(total, cols, (row + k // cols) * cols + k % cols + 1)
            a.imshow(lm.maps[..., k], cmap="viridis", vmin=0, vmax=1)
            a.axis("off")
            a.set_title(f"{lm.layer} #{c}" if k == 0 else f"#{c}", fontsize=7, loc="left")
        row += nrows
    fig.suptitle("Feature maps, early -> late: " + ", ".join(f"{l.layer} {l.shape[0]}x{l.shape[1]}x{l.shape[2]}"
                                                               for l in layers), fontsize=9)
    save_figure(fig, path)
    return path


def tiles_figure(tiles: np.ndarray, titles, path: Path, heading: str, cols: int = 8, scale: float = 1.5) -> Path:
    """A grid of RGB tiles (float 0..1 or uint8): first-layer kernels or filter patterns."""
    plt = pyplot()
    rows = max(1, int(np.ceil(len(tiles) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.6), squeeze=False)
    for a in axes.flat:
        a.axis("off")
    for a, t, title in zip(axes.flat, tiles, titles):
        a.imshow(t, interpolation="nearest")
        a.set_title(title, fontsize=7)
    fig.suptitle(heading, fontsize=9)
    save_figure(fig, path)
    return path


def attack_figure(result, path: Path) -> Path:
    """original | perturbation (amplified to the full range) | adversarial, with both predictions."""
    plt = pyplot()
    diff = result.adversarial.astype(np.float32) - result.original.astype(np.float32)
    amp = np.abs(diff).max() or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.9))
    o, a = result.model["original"], result.model["adversarial"]
    axes[0].imshow(result.original)
    axes[0].set_title(f"original: {o[0]} {o[1]:.2f}", fontsize=9)
    axes[1].imshow(np.clip(0.5 + diff / (2 * amp), 0, 1))
    axes[1].set_title(f"perturbation x{127.5 / amp:.0f}\nL-inf {result.linf * 255:.0f}/255, L2 {result.l2:.2f}",
                      fontsize=9)
    axes[2].imshow(result.adversarial)
    devices = "".join(f"\n{d['precision']}: {d['adversarial'][0]} {d['adversarial'][1]:.2f}" for d in result.devices)
    axes[2].set_title(f"adversarial: {a[0]} {a[1]:.2f}{devices}", fontsize=9,
                      color="red" if result.success else "black")
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)
    return path
