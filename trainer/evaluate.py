"""`edgetl eval`: accuracy, class-averaged accuracy, per-class precision/recall/F1, AUC, the
misclassified files, and the plots, on the run's held-out test split or any folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError
from edge_runtime.log import warn_once

from .data.pipeline import load_arrays, predict_images
from .data.split import Split
from .metrics import classification_report
from .plots import plot_confusion, plot_prediction_grid, plot_roc
from .runs import rundir as R


def load_run_model(run: Path):
    """The run's trained model, computing in float32 whatever precision policy it trained under
    (a mixed-precision run's bfloat16/float16 layers are re-instantiated in float32 with the same
    weights): conversion, evaluation and insight all read the network a device runs."""
    import keras

    from .model import as_float32

    p = Path(run) / R.MODEL
    if not Path(run).is_dir():
        raise UserError(f"{run}: no such run directory")
    if not p.exists():
        raise UserError(f"{p}: no trained model in this run; train first (edgetl train DATA --out {run})")
    try:
        model = keras.saving.load_model(p, compile=False)
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        raise UserError(f"{p}: cannot be loaded as a Keras model ({str(e).splitlines()[0][:120]}); "
                        "re-run training") from None
    return as_float32(model)


def eval_items(run: Path, data: str | None = None,
               data_root: str | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, classes) of the run's test split (its photos under ``data_root`` when the
    data folder moved), or of every image in ``data``."""
    run = Path(run)
    classes = R.read_labels(run)
    if data is None:
        sp = Split.of_run(run, data_root)
        paths, y = sp.paths_labels("test")
        return paths, y, classes
    from .data import load_dataset
    ds = load_dataset(data, hashes=False)
    for rec in ds.bad:
        warn_once(f"skipped {ds.path(rec)}: {rec.error}")
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise UserError(f"{data}: class folder(s) {unknown} are not among the model's classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return [str(ds.path(r)) for r in ds.images], np.array([index[r.label] for r in ds.images]), classes


def data_name(data: str) -> str:
    """Where `eval --data DIR` keeps its plots: RUN/plots/data_<folder name>-<hash of its full path>,
    so two folders of the same name (A/photos, B/photos) never share (or overwrite) a report."""
    import hashlib

    full = str(Path(str(data)).resolve())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(full).name)
    return f"data_{name}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def evaluate_run(run: Path, data: str | None = None, model=None, split_name: str = "test",
                 plots: bool = True, batch_size: int = 32, track: str | None = None, *, hw=None,
                 probs: np.ndarray | None = None, data_root: str | None = None) -> dict:
    """Score the run on its test split (or ``data``), update RUN/metrics.json and the plots.
    ``track``: an MLflow URI; the metrics are added to the run's MLflow run (`train` passes
    nothing here: it logs its own). ``hw``: where ``model`` was placed (`train` passes it).
    ``probs``: the model's scores on the test split when the caller already has them (a frozen
    model's follow from its cached test features), so the images are not run a second time.
    ``data_root``: where the run's data folder lives now, if it moved after training."""
    run = Path(run)
    tracker = None
    if track is not None:
        from .runs.tracking import Tracker
        tracker = Tracker(track, explicit=True)
    model = model or load_run_model(run)
    size = int(model.inputs[0].shape[1])
    method = R.read_resize(run)
    paths, y, classes = eval_items(run, data, data_root)
    if probs is None or data is not None:
        import sys
        probs = predict_images(model, paths, size, batch_size, method, hw, verbose=1 if sys.stderr.isatty() else 0)
    report = classification_report(y, probs, classes, files=paths)
    metrics = R.read_json(run / R.METRICS) if (run / R.METRICS).exists() else {}
    key = split_name if data is None else f"data:{Path(data).resolve()}"
    metrics[key] = report
    R.write_json(run / R.METRICS, metrics)
    if data is None:  # kept so runs can be compared image by image (ROC overlays, disagreements)
        R.write_npz(run / R.PREDICTIONS / f"{split_name}.npz", files=np.array(paths), y=y,
                    probs=probs.astype(np.float32), classes=np.array(classes))
    if plots:   # another folder's plots go beside, never over, the test split's
        d = run / R.PLOTS if data is None else run / R.PLOTS / data_name(data)
        plot_confusion(report["confusion_matrix"], classes, d / "confusion_matrix.png")
        plot_roc(y, probs, classes, d / "roc.png")
        k = min(30, len(paths))
        plot_prediction_grid(load_arrays(paths[:k], size, method), y[:k], probs[:k], classes,
                             d / "predictions.png")
    if tracker is not None and tracker.on:
        from .runs.tracking import test_metrics
        tracker.attach(run)
        name = split_name if data is None else f"data/{Path(data).name}"
        tracker.metrics(test_metrics(report, prefix=name))
        if plots and data is None:
            tracker.artifact(run / R.PLOTS, "plots")
        tracker.end(ok=True)
    return metrics
