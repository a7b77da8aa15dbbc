"""The run directory: the contract between training, evaluation, conversion and benchmarks.

    RUN/config.json       TrainConfig as trained (plus the resolved backbone facts)
    RUN/labels.txt        class names, one per line, in output order
    RUN/split/            train/val/test file lists (+ split.json)
    RUN/history.json      per-epoch metrics of each phase
    RUN/metrics.json      {"test": {...}, "val": {...}} from `edgetl eval`
    RUN/model.keras       the trained model: RGB 0..255 in, class probabilities out
    RUN/heldout_head.npz  the head fit on train only (W, b) when model.keras's head was refit on
                          train+val: int8 recovery compares with it on validation images it never saw
    RUN/plots/            curves, confusion matrix, ROC, prediction grid
    RUN/predictions/      per-image test scores (test.npz) for ROC overlays and run comparison
    RUN/logs/             TensorBoard event files, one folder per phase
    RUN/tracking.json     the MLflow run this run was logged to (when tracked)
    RUN/cache/            cached backbone features (safe to delete)
    RUN/checkpoints/      per-epoch state for --resume
    RUN/state.json        which phase finished last
    RUN/deploy/           the converter's artifacts and manifest
"""
from __future__ import annotations

import json
from pathlib import Path

from edge_runtime import atomic
from edge_runtime.atomic import replacing
from edge_runtime.errors import UserError, read_user_file
from edge_runtime.image import RESIZE_METHOD

CONFIG = "config.json"
LABELS = "labels.txt"
SPLIT = "split"
HISTORY = "history.json"
METRICS = "metrics.json"
MODEL = "model.keras"
HELDOUT_HEAD = "heldout_head.npz"
PLOTS = "plots"
CACHE = "cache"
CHECKPOINTS = "checkpoints"
STATE = "state.json"
DEPLOY = "deploy"
PREDICTIONS = "predictions"
LOGS = "logs"
TRACKING = "tracking.json"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename): readers never see half a file."""
    atomic.write_json(path, obj, default=_default)


def read_json(path: Path):
    """A run file, or one line naming it and the fix (a run folder copied in part, or damaged)."""
    fix = "restore it from a full copy of the run, or train again (edgetl train DATA --out RUN)"
    text = read_user_file(path, missing=f"missing from the run folder; {fix}", unreadable=f"damaged; {fix}")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: damaged ({str(e)[:80]}); {fix}") from None


def write_text(path: Path, text: str) -> None:
    atomic.write_text(path, text)


def write_npz(path: Path, **arrays) -> None:
    """np.savez, atomically."""
    import numpy as np

    with replacing(path) as tmp:
        np.savez(tmp, **arrays)


def read_resize(run: Path) -> str:
    """The resize the run was trained with; runs from before it was a choice used bilinear."""
    from .run import read_config

    return read_config(run).resize if (Path(run) / CONFIG).exists() else RESIZE_METHOD


def read_labels(run: Path) -> list[str]:
    """The run's class names in output order, checked against the class order the run recorded
    when it was split and trained (RUN/split/split.json): a labels.txt whose lines were reordered,
    renamed or cut would name every prediction wrongly, so it is refused, never used."""
    path = Path(run) / LABELS
    fix = "restore it from a full copy of the run, or train again (edgetl train DATA --out RUN)"
    text = read_user_file(path, missing=f"missing from the run folder; {fix}", unreadable=f"damaged; {fix}")
    labels = [line for line in text.splitlines() if line]
    split_json = Path(run) / SPLIT / "split.json"
    if split_json.exists():
        meta = read_json(split_json)
        recorded = meta.get("classes") if isinstance(meta, dict) else None
        if isinstance(recorded, list) and labels != recorded:
            raise UserError(f"{path}: the class names {labels[:4]}{'...' if len(labels) > 4 else ''} differ from the "
                            f"order the model was trained with {recorded[:4]}{'...' if len(recorded) > 4 else ''} "
                            f"({split_json}); {fix}")
    return labels


def _default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
