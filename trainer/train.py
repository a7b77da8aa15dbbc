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
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing
from edge_runtime.errors import UserError
from edge_runtime.image import check_resize_method
from edge_runtime.log import log as _log

from . import rundir as R
from .backbones import get_backbone
from .compare import flatten
from .config import TrainConfig
from .data import load_dataset, make_split
from .data.pipeline import augmenter, image_dataset, training_model
from .data.split import Split


def _verbose():
    return 1 if sys.stderr.isatty() else 2


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


def class_weights(y: np.ndarray, n: int, mode: str) -> dict | None:
    counts = np.bincount(y, minlength=n).astype(np.float64)
    ratio = counts.max() / max(counts.min(), 1)
    if mode == "none" or (mode == "auto" and ratio < 1.5):
        return None
    w = counts.sum() / (n * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(n)}


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
def better_epoch(acc: float, loss: float, best_acc: float, best_loss: float) -> bool:
    """The one best-epoch rule (head and fine-tuning): higher validation accuracy; on a tie, the
    lower validation loss (accuracy is coarse on a small validation split)."""
    return acc > best_acc or (acc == best_acc and loss < best_loss)


class BestWeights:
    """Track the best epoch by validation accuracy (ties: lower val loss) and restore it."""

    def __init__(self, model):
        self.model, self.best, self.weights, self.epoch = model, (-1.0, np.inf), None, -1

    def update(self, epoch, logs):
        score = (logs.get("val_accuracy", 0.0), logs.get("val_loss", 0.0))
        if better_epoch(*score, *self.best):
            self.best, self.weights, self.epoch = score, self.model.get_weights(), epoch

    def restore(self):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def train_head(cfg: TrainConfig, parts, F: dict, Y: dict, n: int, run: Path | None = None) -> dict:
    """Fit the head on cached features and set its weights into the model. Returns the head's
    history (per-epoch curves for sgd; the L2 selection for lbfgs); with ``run``, also writes it
    as TensorBoard logs there."""
    if cfg.head_solver == "sgd":
        return _train_head_sgd(cfg, parts, F, Y, n, run)
    from .linear import calibrate_temperature, solve_head

    loss = "squared-hinge" if cfg.head == "linear-svm" else "logistic"
    # Fine-tuning early-stops on the validation split, so its starting head must not have seen it.
    refit = cfg.refit and not cfg.fine_tune
    train_only, final, sel = solve_head(F["train"], Y["train"], F["val"], Y["val"], n, loss=loss,
                                        class_weights=class_weights(Y["train"], n, cfg.class_weights),
                                        refit=refit, seed=cfg.seed)
    W, b = final.W, final.b
    if loss == "squared-hinge" and len(Y["val"]):
        # margins -> probabilities, with the temperature measured where the model is held out
        t = calibrate_temperature(train_only.scores(F["val"]), Y["val"])
        W, b = W * t, b * t
        sel.extra["temperature"] = t
    parts.head.get_layer("logits").set_weights([W, b])
    if run is not None:
        from .tblog import write_l2_selection
        write_l2_selection(run, sel.to_dict())
        _save_heldout_head(run, train_only if sel.refit else None, sel.extra.get("temperature", 1.0))
    i = sel.grid.index(sel.l2)
    _log(f"head: L-BFGS {loss}, L2 {sel.l2:.3g} chosen by {sel.method}"
         f"{f' ({sel.folds} folds)' if sel.method == 'k-fold' else ''}, held-out accuracy "
         f"{sel.val_accuracy[i]:.4f}; {'refit on train+val' if sel.refit else 'fit on train'} "
         f"({sel.n_fit} images) in {sel.seconds:.1f}s")
    return {"solver": "lbfgs", "selection": sel.to_dict()}


def _save_heldout_head(run: Path, train_only, temperature: float = 1.0) -> None:
    """Keep the train-only head beside a head refit on train+val (``train_only``; None: the head
    never saw the validation split, and a file left by an earlier training of this run goes).
    The validation images are training data of a refit head, so its int8 version agrees with it
    on them more often than on new photos (flowers5 MobileNetV2: 0.983, against 0.970 for this
    head, which never saw them); the converter's int8 recovery measures on this head instead."""
    path = run / R.HELDOUT_HEAD
    if train_only is None:
        path.unlink(missing_ok=True)
        return
    R.write_npz(path, W=(train_only.W * temperature).astype(np.float32),
                b=(train_only.b * temperature).astype(np.float32))


def _train_head_sgd(cfg: TrainConfig, parts, F: dict, Y: dict, n: int, run: Path | None = None) -> dict:
    """The epoch-based head (Adam, dropout, label smoothing, early stop on val): kept for
    comparison and for features too many to solve full-batch. It is tiny, so it trains on one
    device (a copy of the head outside any distribution strategy); its weights are then set."""
    import keras

    from .linear import calibrate_temperature
    from .model import make_head

    keras.utils.set_random_seed(cfg.seed)
    head = make_head(parts.feature_width, n, cfg.dropout, cfg.l2)
    if cfg.head == "linear-svm":
        loss = keras.losses.SquaredHinge()   # one-vs-rest linear SVM in the primal
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
    head.compile(keras.optimizers.Adam(cfg.lr), loss, metrics=["accuracy"], jit_compile=False)
    onehot = {k: np.eye(n, dtype=np.float32)[v] for k, v in Y.items()}
    if cfg.head == "linear-svm":
        onehot = {k: 2 * v - 1 for k, v in onehot.items()}
    best = BestWeights(head)
    track = keras.callbacks.LambdaCallback(on_epoch_end=best.update)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience)
    callbacks = [track, stop]
    if run is not None:
        from .tblog import keras_callback
        callbacks.append(keras_callback(run, "head"))
    h = head.fit(F["train"], onehot["train"], validation_data=(F["val"], onehot["val"]),
                 epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
                 class_weight=class_weights(Y["train"], n, cfg.class_weights), callbacks=callbacks)
    best.restore()
    if cfg.head == "linear-svm":
        dense = head.get_layer("logits")
        W, b = dense.get_weights()
        t = calibrate_temperature(F["val"] @ W + b, Y["val"])
        dense.set_weights([W * t, b * t])
    parts.head.set_weights(head.get_weights())
    if run is not None:
        _save_heldout_head(run, None)   # trained on train only: validation is already held out
    hist = {k: [float(x) for x in v] for k, v in h.history.items()}
    hist["solver"] = "sgd"
    hist["best_epoch"] = best.epoch + 1
    _log(f"head: {len(hist['loss'])} epochs, best epoch {best.epoch + 1} "
         f"val accuracy {best.best[0]:.4f}")
    return hist


# ------------------------------------------------------------------------- phase 2
def fine_tune(run: Path, cfg: TrainConfig, parts, split: Split, strategy, hw, resume: bool) -> dict:
    """Phase 2: the top blocks trained on augmented images, checkpointed every epoch (the best
    by validation accuracy is kept) so ``resume`` continues after the last finished epoch."""
    import keras

    ck = run / R.CHECKPOINTS
    ck.mkdir(parents=True, exist_ok=True)
    plan = _FineTunePlan(cfg, split, strategy.num_replicas_in_sync)
    model = _fine_tune_model(cfg, parts, strategy, hw, plan)
    if cfg.head == "linear-svm":
        _log("note: --head linear-svm: the frozen head was fit with the squared hinge; fine-tuning trains the "
             "whole model with cross-entropy on its softmax output, like the softmax head")
    fstate = _resume_fine_tune(ck, parts, model) if resume and (ck / "finetune_state.json").exists() else {
        "best_val_accuracy": -1.0, "best_val_loss": float("inf"), "wait": 0, "history": {}, "best_epoch": 0,
        "epoch": 0}
    start = fstate["epoch"]
    keras.utils.set_random_seed(cfg.seed + 1000 + start)
    if start < cfg.fine_tune_epochs and fstate["wait"] < cfg.fine_tune_patience:
        from .tblog import keras_callback
        train_ds, val_ds = _fine_tune_data(run, cfg, split, strategy, hw, plan, start)
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs, initial_epoch=start,
                  class_weight=class_weights(plan.y, plan.n, cfg.class_weights),
                  callbacks=[_checkpoint_callback(ck, cfg, parts, model, fstate), keras_callback(run, "fine_tune")],
                  verbose=_verbose())
    if (ck / "best.weights.h5").exists():
        parts.model.load_weights(ck / "best.weights.h5")
    hist = dict(fstate["history"])
    hist["best_epoch"] = fstate["best_epoch"]
    _log(f"fine-tune: best epoch {fstate['best_epoch']} val accuracy {fstate['best_val_accuracy']:.4f}")
    return hist


class _FineTunePlan:
    """Steps and batches of fine-tuning. Data-parallel batches must split evenly across replicas:
    the ragged end is dropped (fewer than one batch of images per epoch), and validation keeps all
    but fewer than ``replicas`` images."""

    def __init__(self, cfg: TrainConfig, split: Split, replicas: int):
        self.paths, self.y = split.paths_labels("train")
        self.vpaths, self.vy = split.paths_labels("val")
        self.n, self.replicas = len(split.classes), replicas
        self.even = replicas > 1
        self.drop = self.even and len(self.paths) >= cfg.batch_size
        self.steps = (len(self.paths) // cfg.batch_size if self.drop
                      else int(np.ceil(len(self.paths) / cfg.batch_size)))
        self.total = self.steps * cfg.fine_tune_epochs
        self.warm = max(1, int(self.steps * cfg.warmup_epochs))
        self.vbatch = (max(replicas, min(cfg.batch_size, len(self.vpaths) // replicas * replicas)) if self.even
                       else cfg.batch_size)


def _fine_tune_model(cfg: TrainConfig, parts, strategy, hw, plan: _FineTunePlan):
    """The top blocks unfrozen, augmentation in front, compiled with warm-up + cosine decay."""
    import keras

    from .hardware import prepare_model
    from .model import unfreeze_top

    with strategy.scope():
        trainable = unfreeze_top(parts.base, cfg.fine_tune_blocks, train_bn=cfg.weights == "none")
        model = prepare_model(training_model(parts.model, augmenter(cfg.seed) if cfg.augment else None), hw)
        sched = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.fine_tune_lr / 10, decay_steps=max(plan.total - plan.warm, 1),
            warmup_target=cfg.fine_tune_lr, warmup_steps=plan.warm, alpha=0.01)
        model.compile(
            keras.optimizers.Adam(sched),
            keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=["accuracy"], jit_compile=hw.jit_compile)
    _log(f"fine-tune: top {cfg.fine_tune_blocks} blocks ({trainable} layers with weights) trainable, "
         f"lr {cfg.fine_tune_lr} warm-up {plan.warm} steps then cosine over {plan.total} steps")
    return model


def _resume_fine_tune(ck: Path, parts, model) -> dict:
    """Weights and optimizer state of the last finished epoch; returns the saved state."""
    fstate = R.read_json(ck / "finetune_state.json")
    parts.model.load_weights(ck / "last.weights.h5")
    opt_vars = np.load(ck / "optimizer.npz")
    model.optimizer.build(model.trainable_variables)
    for v, a in zip(model.optimizer.variables, [opt_vars[k] for k in sorted(opt_vars, key=int)]):
        v.assign(a)
    _log(f"resuming fine-tuning after epoch {fstate['epoch']}")
    return fstate


def _fine_tune_data(run: Path, cfg: TrainConfig, split: Split, strategy, hw, plan: _FineTunePlan, start: int):
    """(train, val) image batches, placed for the strategy; decoded images cached (on disk above
    the memory budget)."""
    from .hardware import fit_data

    train_ds = fit_data(strategy, hw, lambda shard: image_dataset(
        plan.paths, plan.y, cfg.size, cfg.batch_size, method=cfg.resize, shuffle=True, seed=cfg.seed + start,
        num_classes=plan.n, drop_remainder=plan.drop, shard=shard, spill_dir=run / R.CACHE))
    val_ds = fit_data(strategy, hw, lambda shard: image_dataset(
        plan.vpaths, plan.vy, cfg.size, plan.vbatch, method=cfg.resize, num_classes=plan.n,
        drop_remainder=plan.even, shard=shard, spill_dir=run / R.CACHE))
    return train_ds, val_ds


def _checkpoint_callback(ck: Path, cfg: TrainConfig, parts, model, fstate: dict):
    """Per epoch: history, best and last weights, optimizer state, then the state file (written
    last: the commit point --resume reads), and early stopping on validation accuracy."""
    import keras

    def save_weights(name: str):
        with replacing(ck / f"{name}.weights.h5") as tmp:
            parts.model.save_weights(tmp)

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            for k, v in logs.items():
                fstate["history"].setdefault(k, []).append(float(v))
            acc, loss = logs.get("val_accuracy", 0), logs.get("val_loss", 0)
            if better_epoch(acc, loss, fstate["best_val_accuracy"], fstate["best_val_loss"]):
                fstate.update(best_val_accuracy=acc, best_val_loss=loss, wait=0, best_epoch=epoch + 1)
                save_weights("best")
            else:
                fstate["wait"] += 1
            save_weights("last")
            with replacing(ck / "optimizer.npz") as tmp:
                np.savez(tmp, **{str(i): keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)})
            fstate["epoch"] = epoch + 1
            R.write_json(ck / "finetune_state.json", fstate)
            if fstate["wait"] >= cfg.fine_tune_patience:
                self.model.stop_training = True
                _log(f"early stop after epoch {epoch + 1}: no val accuracy gain in {fstate['wait']} epochs")

    return Checkpoint()


# ------------------------------------------------------------------------- orchestration
def _track_head(tracker, head: dict) -> None:
    """sgd: per-epoch curves; lbfgs: the chosen L2 and the held-out curve along the grid."""
    if head.get("solver") != "lbfgs":
        tracker.series("head", head)
        return
    sel = head["selection"]
    order = sorted(range(len(sel["grid"])), key=lambda i: -sel["grid"][i])
    tracker.series("head_l2_path", {"heldout_accuracy": [sel["val_accuracy"][i] for i in order],
                                    "heldout_loss": [sel["val_loss"][i] for i in order],
                                    "l2": [sel["grid"][i] for i in order]})
    tracker.metrics({"head/l2": sel["l2"], "head/seconds": sel["seconds"]})


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
        from .run import read_config
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
    from .tracking import Tracker

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
    from .tracking import test_metrics
    tracker.metrics({**test_metrics(t), **{f"timing/{k}": v for k, v in metrics["timing"].items()}})
    for f in (R.CONFIG, R.METRICS, R.HISTORY, R.LABELS, f"{R.SPLIT}/split.json"):
        tracker.artifact(run / f, "run")
    tracker.artifact(run / R.PLOTS, "plots")
    tracker.artifact(run / R.MODEL, "model")
    _log(f"done: {spec.name} {cfg.alpha}@{cfg.size} test accuracy {t['accuracy']:.4f} "
         f"(class-avg {t['class_avg_accuracy']:.4f}, n={t['n']}) in {time.time() - t0:.0f}s -> {run}")
    return metrics
