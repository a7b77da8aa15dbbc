"""`edgetl train`: transfer learning in two phases, leaving a complete run directory.

Phase 1 (always): the frozen backbone's pooled features are computed once per split and cached;
the head (dropout + dense, or a linear SVM) trains on the cache in milliseconds per epoch.
Phase 2 (--fine-tune): the top blocks are unfrozen (BatchNorm stays in inference mode) and the
whole model trains on augmented images with warm-up + cosine decay and early stopping.
Every phase leaves state on disk, so `--resume` continues a killed run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing
from edge_runtime.errors import UserError
from edge_runtime.image import check_resize_method
from edge_runtime.log import log as _log

from .backbones import get_backbone
from .config import TrainConfig
from .data import load_dataset, make_split
from .data.split import Split
from .finetune import fine_tune
from .head import _save_heldout_head, _track_head, class_weights, train_head  # noqa: F401 - re-exported
from .runs import rundir as R
from .runs.compare import flatten


def resolve(cfg: TrainConfig):
    """Fill in backbone defaults (size, alpha) and validate them."""
    spec = get_backbone(cfg.backbone)
    if cfg.alpha is None:
        cfg.alpha = spec.default_alpha
    if cfg.size is None:
        cfg.size = spec.default_size
    spec.check(cfg.size, cfg.alpha)
    if cfg.head not in ("softmax", "linear-svm"):
        raise UserError(f"unknown --head {cfg.head!r}; use softmax or linear-svm")
    if cfg.head_solver not in ("lbfgs", "sgd"):
        raise UserError(f"unknown --head-solver {cfg.head_solver!r}; use lbfgs or sgd")
    check_numbers(cfg)
    return spec


def check_numbers(cfg: TrainConfig) -> None:
    """Options that would otherwise fail only at the end of a run (and be saved for --resume)."""
    for name in ("batch_size", "epochs", "fine_tune_epochs", "patience", "fine_tune_patience"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: give 1 or more")
    train, val, test = cfg.fractions
    if min(cfg.fractions) < 0 or abs(train + val + test - 1) > 1e-6 or train <= 0 or test <= 0:
        raise UserError(f"--fractions {','.join(map(str, cfg.fractions))}: give train,val,test shares that "
                        "add up to 1, with train and test above 0 (e.g. 0.8,0.1,0.1)")
    if cfg.fine_tune and val <= 0:
        raise UserError("--fine-tune early-stops on the validation split: give it a share in --fractions "
                        "(e.g. 0.8,0.1,0.1)")
    if cfg.fine_tune and cfg.backbone.startswith("hub:"):
        raise UserError(f"--fine-tune with {cfg.backbone}: a hub backbone is a SavedModel Keras can only run "
                        "frozen; drop --fine-tune or pick a registry backbone (edgetl backbones)")


def _state(run: Path) -> dict:
    p = run / R.STATE
    return R.read_json(p) if p.exists() else {"phase": None}


def _set_state(run: Path, **kw):
    s = _state(run)
    s.update(kw)
    R.write_json(run / R.STATE, s)


# ------------------------------------------------------------------------- features
def _cache_key(cfg: TrainConfig, paths: list[str]) -> str:
    taps = list(feature_taps(cfg, get_backbone(cfg.backbone)))
    h = hashlib.sha256(json.dumps([cfg.backbone, cfg.alpha, cfg.size, cfg.weights, cfg.resize]
                                  + ([taps] if taps else [])).encode())
    for p in paths:
        h.update(p.encode())
    return h.hexdigest()[:16]


def feature_taps(cfg: TrainConfig, spec) -> tuple[str, ...]:
    """The inner layers pooled beside the final features in this run (``--feature-taps``)."""
    return tuple(spec.taps) if cfg.feature_taps == "auto" else ()


def _identity(cfg: TrainConfig, spec) -> dict:
    taps = feature_taps(cfg, spec)   # named only when used: untapped extractors keep their cache keys
    return {"backbone": spec.name, "alpha": cfg.alpha, "size": cfg.size, "preprocessing": spec.preprocessing,
            **({"taps": list(taps)} if taps else {})}


def _features_file(run: Path, cfg: TrainConfig, split: Split, name: str) -> Path:
    return run / R.CACHE / f"features_{name}_{_cache_key(cfg, split.paths_labels(name)[0])}.npy"


def start_features(run: Path, cfg: TrainConfig, spec, split: Split, hw=None):
    """(pre-key, Speculation or None): when a previous run left a converted extractor for this
    backbone and weights, train and val features start on it now, before the Keras model exists."""
    from .features import speculate

    jobs = [(_features_file(run, cfg, split, s), split.paths_labels(s)[0], f"features[{s}]") for s in ("train", "val")]
    return speculate(cfg.features, _identity(cfg, spec), cfg.weights, cfg.seed, jobs, cfg.size, cfg.resize, hw=hw)


def feature_engine(run: Path, cfg: TrainConfig, spec, parts, split: Split, hw=None, pre=None, *, speculation=None):
    """The engine this run's features come from (trainer.features), chosen once and recorded. A
    started speculation is kept only when the chosen engine is the extractor it ran on."""
    from .features import CHECK_IMAGES, choose_engine

    sample = split.paths_labels("train")[0][:CHECK_IMAGES]
    try:
        engine = choose_engine(run, cfg.features, parts.features, _identity(cfg, spec), sample, cfg.size,
                               cfg.resize, hw=hw, pre=pre, speculation=speculation)
        if speculation is not None:
            if engine.name == "litert" and Path(engine.tflite) == speculation.path:
                speculation.join()
            else:
                speculation.discard()
    except BaseException:
        if speculation is not None:
            speculation.discard()
        raise
    detail = (f", {engine.checked_images} images within {engine.max_relative_difference:.1e} of Keras, "
              f"extractor {'cached' if engine.tflite_cached else f'converted in {engine.convert_s:.0f}s'}"
              if engine.name == "litert" else "")
    _log(f"features: {engine.name} ({engine.reason}{detail})")
    return engine


def cached_features(run: Path, cfg: TrainConfig, parts, split: Split, name: str, hw=None, engine=None) -> np.ndarray:
    """Backbone features of one split, computed once into RUN/cache (memory-mapped, read-only)."""
    from .features import LiteRTExtractor, cores, keras_compute, litert_compute, write_features

    paths, _ = split.paths_labels(name)
    f = _features_file(run, cfg, split, name)
    if f.exists():
        return np.load(f, mmap_mode="r")
    if engine is not None and engine.name == "litert":
        compute, workers = litert_compute(LiteRTExtractor(engine.tflite), cfg.size, cfg.resize), cores()
    else:
        compute, workers = keras_compute(parts.features, cfg.size, cfg.resize, cfg.batch_size, hw), 1
    return write_features(f, paths, parts.feature_width, compute, workers, label=f"features[{name}]")


# ------------------------------------------------------------------------- phase 1


# ------------------------------------------------------------------------- phase 2


# ------------------------------------------------------------------------- orchestration


def _save_model(model, run: Path):
    """RUN/model.keras always computes in float32 (the mixed-precision policy is how it trained,
    not what it is): it loads and converts anywhere, on a machine without bfloat16 kernels too."""
    from .model import as_float32

    with replacing(run / R.MODEL) as tmp:
        as_float32(model).save(tmp)


# what a run that stopped before any work worth resuming can hold (all written by edgetl); one
# with cached features or checkpoints is continued with --resume instead
_STARTED_ONLY = {R.SPLIT, R.CONFIG, R.LABELS, R.STATE, R.LOGS, R.TRACKING}


def _clear_failed_start(run: Path) -> bool:
    """A run folder left by a start that failed before any model was trained (bad data found
    late, Ctrl-C during feature extraction) holds only edgetl's own files: clear them so the same
    command can be run again. Anything else (a trained model, a user's file) keeps the folder."""
    import shutil

    entries = list(run.iterdir())
    if any(e.name not in _STARTED_ONLY for e in entries):
        return False
    if (run / R.STATE).exists():
        try:
            if R.read_json(run / R.STATE).get("phase") != "started":
                return False
        except (UserError, AttributeError):
            return False
    for e in entries:
        shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
    _log(f"note: {run} held only what a failed start left (no trained model); starting it again")
    return True


def prepare_run(cfg: TrainConfig, resume: bool) -> tuple[Path, Split]:
    """Create the run directory with config, labels and split (or reload them to resume)."""
    run = Path(cfg.out)
    if resume:
        split = Split.load(run / R.SPLIT)
        return run, split
    if run.exists() and any(run.iterdir()) and not _clear_failed_start(run):
        raise UserError(f"{run}: run directory exists and is not empty; choose a new --out, or use "
                        f"`edgetl train --resume {run}` to continue it")
    from edge_runtime.log import Progress

    scan = {}

    def progress(done, total):   # decode check + perceptual hash of every file
        bar = scan.setdefault("bar", Progress("checking images", total, unit="img"))
        bar.add(done - bar.done)
        if done == total:
            bar.finish()
    ds = load_dataset(cfg.data, progress=progress)
    for b in ds.bad:
        _log(f"skipped {b.rel}: {b.error}")
    if ds.bad:
        _log(f"skipped {len(ds.bad)} unreadable file(s)")
    ds.require_trainable()
    split = make_split(ds, fractions=cfg.fractions, seed=cfg.seed)
    for note in split.notes:
        _log(f"note: {note}")
    run.mkdir(parents=True, exist_ok=True)
    split.save(run / R.SPLIT)
    R.write_text(run / R.LABELS, "\n".join(split.classes) + "\n")
    return run, split


def train(cfg: TrainConfig, resume: bool = False, track: str | None = None) -> dict:
    """Run (or continue) training; returns what it wrote to RUN/metrics.json. ``track``: an
    MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none: no tracking). The Keras backend is
    ``cfg.backend`` (None: Keras' configured one); a resumed run keeps the one it started with."""
    from .hardware import use_backend

    if resume:
        run = Path(cfg.out)
        if not (run / R.CONFIG).exists():
            raise UserError(f"{run}: no config.json here, nothing to resume; start with `edgetl train DATA --out {run}`")
        from .runs.run import read_config
        cfg = read_config(run).train_config()
        cfg.out = str(run)   # the folder given, wherever the run was started or moved from
        if _state(run).get("phase") == "done":
            _log(f"{run}: already finished")
            return R.read_json(run / R.METRICS)
    with use_backend(cfg.backend) as backend:
        cfg.backend = backend
        return _train(cfg, resume, track)


def _refuse_tensorflow_only(cfg: TrainConfig, spec) -> None:
    if cfg.backend == "tensorflow":
        return
    if spec.family == "hub":
        raise UserError(f"{spec.name}: TF Hub backbones run on TensorFlow only; use --backend tensorflow")
    if str(cfg.data).startswith("tfds:"):
        raise UserError(f"{cfg.data}: tensorflow-datasets needs TensorFlow; train with --backend tensorflow, "
                        "or once on TensorFlow `edgetl data inspect tfds:NAME` (it materialises the data set as "
                        "folders) and then train on those folders")


def _train(cfg: TrainConfig, resume: bool, track: str | None) -> dict:
    import keras

    from .hardware import setup
    from .model import build
    from .runs.tracking import Tracker

    t0 = time.time()
    spec = resolve(cfg)
    check_resize_method(cfg.resize)
    _refuse_tensorflow_only(cfg, spec)
    tracker = Tracker(track, explicit=track is not None)  # a missing extra fails before anything is written
    strategy, hw = setup(cfg.backend, cfg.strategy, cfg.mixed_precision)
    _log(hw.line())
    keras.utils.set_random_seed(cfg.seed)
    run_existed = Path(cfg.out).exists()
    run, split = prepare_run(cfg, resume)  # checks the data before anything is written
    n = len(split.classes)
    pre, speculation = start_features(run, cfg, spec, split, hw)
    try:
        with strategy.scope():
            parts = build(spec, cfg.size, cfg.alpha, cfg.weights, n, cfg.dropout, cfg.l2, taps=feature_taps(cfg, spec))
    except BaseException:
        if speculation is not None:
            speculation.discard()
        if not resume and not run_existed:  # a bad backbone/weights file leaves nothing behind
            shutil.rmtree(run, ignore_errors=True)
        raise
    try:
        return _record_and_run(run, cfg, spec, parts, split, strategy, hw, resume=resume, t0=t0, tracker=tracker,
                               pre=pre, speculation=speculation)
    finally:
        if speculation is not None:
            speculation.discard()   # unless the run confirmed and used it: then nothing to do


def _record_and_run(run, cfg, spec, parts, split, strategy, hw, *, resume, t0, tracker, pre, speculation) -> dict:
    R.write_json(run / R.CONFIG, {"train": cfg.to_dict(), "backbone": {
        "name": spec.name, "family": spec.family, "size": cfg.size, "alpha": cfg.alpha,
        "preprocessing": spec.preprocessing, "feature_width": parts.feature_width,
        "taps": list(feature_taps(cfg, spec)),
        "weights_source": spec.weights_source if cfg.weights == "imagenet" else cfg.weights},
        "input": {"size": cfg.size, "range": [0, 255], "color": "RGB", "resize": cfg.resize},
        "hardware": hw.to_dict()})
    if not resume:
        _set_state(run, phase="started")
    tracker.start(run, "train", resume=resume, tags={
        "backbone": f"{spec.name} {cfg.alpha}@{cfg.size}", "head": cfg.head, "fine_tune": cfg.fine_tune,
        "data_fingerprint": (split.fingerprints or {}).get("data"), "data": cfg.data})
    tracker.params(flatten(R.read_json(run / R.CONFIG)))
    try:
        metrics = _run_phases(run, cfg, spec, parts, split, strategy, hw, resume=resume, t0=t0, tracker=tracker,
                              pre=pre, speculation=speculation)
    except BaseException:
        tracker.end(ok=False)
        raise
    tracker.end(ok=True)
    return metrics


def _run_phases(run: Path, cfg: TrainConfig, spec, parts, split: Split, strategy, hw, *, resume: bool,
                t0: float, tracker, pre=None, speculation=None) -> dict:
    """Features, head, fine-tuning, evaluation: everything that fills an already prepared run."""
    n = len(split.classes)
    _log(f"{spec.name} alpha {cfg.alpha} @ {cfg.size}px, weights {cfg.weights}, {n} classes, "
         + ", ".join(f"{s} {len(split[s])}" for s in ("train", "val", "test")))

    t_feat = time.time()
    engine = feature_engine(run, cfg, spec, parts, split, hw, pre, speculation=speculation)
    F, Y = {}, {}
    for s in ("train", "val"):
        F[s] = cached_features(run, cfg, parts, split, s, hw, engine)
        Y[s] = split.paths_labels(s)[1]
    t_feat = time.time() - t_feat
    t_head = time.time()
    from .hardware import one_device
    with one_device(hw):
        history = {"head": train_head(cfg, parts, F, Y, n, run)}
    t_head = time.time() - t_head
    _track_head(tracker, history["head"])
    _save_model(parts.model, run)
    _set_state(run, phase="head")
    R.write_json(run / R.HISTORY, history)
    if cfg.fine_tune:
        if spec.family == "hub":
            raise UserError(f"{spec.name}: fine-tuning a TF Hub SavedModel is not supported; drop --fine-tune")
        history["fine_tune"] = fine_tune(run, cfg, parts, split, strategy, hw, resume)
        tracker.series("fine_tune", history["fine_tune"])
        _save_model(parts.model, run)
        R.write_json(run / R.HISTORY, history)
        _set_state(run, phase="fine_tune")
    t_trained = time.time() - t0
    from .evaluate import evaluate_run
    from .plots import plot_history
    plot_history(history, run / R.PLOTS / "history.png")
    test_probs = None
    if not cfg.fine_tune:   # the frozen model's test scores follow from test features: no second pass
        from edge_runtime.classifier import softmax
        t_test = time.time()
        W, b = parts.head.get_layer("logits").get_weights()
        test_probs = softmax(np.asarray(cached_features(run, cfg, parts, split, "test", hw, engine), np.float64) @ W + b)
        t_feat += time.time() - t_test
    metrics = evaluate_run(run, model=parts.model, hw=hw, probs=test_probs)
    metrics["features"] = engine.to_dict()
    t = metrics["test"]
    if "selection" in history["head"]:
        metrics["head"] = history["head"]["selection"]
        from .plots import plot_l2_selection
        plot_l2_selection(metrics["head"], run / R.PLOTS / "head_l2.png")
    metrics["timing"] = {"feature_extraction_s": round(t_feat, 2), "head_s": round(t_head, 2), "trained_s": round(t_trained, 2),
                         "total_s": round(time.time() - t0, 2)}
    R.write_json(run / R.METRICS, metrics)
    _set_state(run, phase="done")
    from .runs.tracking import test_metrics
    tracker.metrics({**test_metrics(t), **{f"timing/{k}": v for k, v in metrics["timing"].items()}})
    for f in (R.CONFIG, R.METRICS, R.HISTORY, R.LABELS, f"{R.SPLIT}/split.json"):
        tracker.artifact(run / f, "run")
    tracker.artifact(run / R.PLOTS, "plots")
    tracker.artifact(run / R.MODEL, "model")
    _log(f"done: {spec.name} {cfg.alpha}@{cfg.size} test accuracy {t['accuracy']:.4f} "
         f"(class-avg {t['class_avg_accuracy']:.4f}, n={t['n']}) in {time.time() - t0:.0f}s -> {run}")
    return metrics
