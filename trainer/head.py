"""Phase 1's head: the dense layer on the frozen backbone's cached features, solved exactly
(L-BFGS, L2 chosen on held-out data; trainer.linear) or trained by epochs (--head-solver sgd)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.log import log as _log

from .config import TrainConfig
from .runs import rundir as R


def class_weights(y: np.ndarray, n: int, mode: str) -> dict | None:
    counts = np.bincount(y, minlength=n).astype(np.float64)
    ratio = counts.max() / max(counts.min(), 1)
    if mode == "none" or (mode == "auto" and ratio < 1.5):
        return None
    w = counts.sum() / (n * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(n)}


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
        from .runs.tblog import write_l2_selection
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
        from .runs.tblog import keras_callback
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
