"""Phase 2 (--fine-tune): the top blocks of the backbone trained on augmented images, with warm-up
and cosine decay, early stopping on validation, and a checkpoint every epoch for --resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing
from edge_runtime.log import log as _log

from .config import TrainConfig
from .data.pipeline import augmenter, image_dataset, training_model
from .data.split import Split
from .head import better_epoch, class_weights
from .runs import rundir as R


def _verbose():
    """Keras' progress bar on a terminal, one line per epoch in a log."""
    import sys

    return 1 if sys.stderr.isatty() else 2


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
    if cfg.weights == "none" and start == 0:
        _restart_head(parts)
    if start < cfg.fine_tune_epochs and fstate["wait"] < cfg.fine_tune_patience:
        from .runs.tblog import keras_callback
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


def _restart_head(parts) -> None:
    """From random init the frozen-head phase saw features at the untrained statistics' scale
    (MobileNetV3-Small: ~1e-10), so its weights are that scale's inverse (~1e8; their L2 term
    alone made the fine-tune loss 8.7e15-6.6e17). Fine-tuning normalises those features, so the head
    starts again from Keras' own initial values."""
    from .model import logits_layer

    dense = logits_layer(parts.model)
    dense.kernel.assign(dense.kernel_initializer(tuple(dense.kernel.shape)))
    dense.bias.assign(dense.bias_initializer(tuple(dense.bias.shape)))
    _log("fine-tune: from random init the head starts afresh (the frozen-head phase saw unnormalised features)")


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
