"""TensorBoard logs: Keras' standard event files under RUN/logs/<phase>/ (train/ and
validation/ per epoch), so `tensorboard --logdir runs/` shows every run's curves together."""
from __future__ import annotations

from pathlib import Path

from . import rundir as R


def logdir(run: Path, phase: str) -> Path:
    return Path(run) / R.LOGS / phase


def keras_callback(run: Path, phase: str):
    """Keras' own TensorBoard callback: epoch_loss / epoch_accuracy (and the learning rate) per
    epoch, for train and validation. No graph or profile (they cost time and say nothing new)."""
    import keras
    return keras.callbacks.TensorBoard(log_dir=str(logdir(run, phase)), write_graph=False,
                                       profile_batch=0, update_freq="epoch")


def write_l2_selection(run: Path, selection: dict) -> None:
    """The exactly solved head has no epochs: its curve is held-out accuracy and loss along the
    L2 grid (step = grid index, strongest L2 first), written as the same kind of scalars."""
    import tensorflow as tf
    order = sorted(range(len(selection["grid"])), key=lambda i: -selection["grid"][i])
    w = tf.summary.create_file_writer(str(logdir(run, "head") / "l2_selection"))
    with w.as_default():
        for step, i in enumerate(order):
            for key in ("val_accuracy", "val_loss"):
                v = selection[key][i]
                if v == v:   # NaN when no held-out data
                    tf.summary.scalar(f"heldout_{key[4:]}", v, step=step)
            tf.summary.scalar("l2", selection["grid"][i], step=step)
        tf.summary.scalar("chosen_l2", selection["l2"], step=0)
    w.close()
