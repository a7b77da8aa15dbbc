"""TensorBoard logs: standard event files under RUN/logs/<phase>/ (train/ and validation/ per
epoch, the same tags Keras' own callback writes), so `tensorboard --logdir runs/` shows every
run's curves together.

Written with TensorBoard's protobufs rather than `tf.summary`, so a run on the JAX backend (no
TensorFlow on the machine) logs exactly like one on TensorFlow. Without the `tensorboard` package
there are no logs, said once.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import rundir as R

_warned = False


def logdir(run: Path, phase: str) -> Path:
    return Path(run) / R.LOGS / phase


class ScalarWriter:
    """Scalars into one event-file folder; a no-op when TensorBoard is not installed."""

    def __init__(self, folder: Path):
        global _warned
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            if not _warned:
                print('note: no TensorBoard logs (pip install "edgetl[track]" for them)', file=sys.stderr)
                _warned = True
            self._w = None
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._w = EventFileWriter(str(folder))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._w is None:
            return
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        self._w.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=scalar_pb(tag, float(value))))

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


def keras_callback(run: Path, phase: str):
    """Per epoch: epoch_loss / epoch_accuracy / ... for train and validation, and the learning rate."""
    import keras

    class EpochScalars(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.writers = {part: ScalarWriter(logdir(run, phase) / part) for part in ("train", "validation")}

        def on_epoch_end(self, epoch, logs=None):
            for k, v in (logs or {}).items():
                part, name = ("validation", k[4:]) if k.startswith("val_") else ("train", k)
                self.writers[part].scalar(f"epoch_{name}", v, epoch)
            lr = getattr(getattr(self.model, "optimizer", None), "learning_rate", None)
            if lr is not None and "learning_rate" not in (logs or {}):
                self.writers["train"].scalar("epoch_learning_rate", float(keras.ops.convert_to_numpy(lr)), epoch)

        def on_train_end(self, logs=None):
            for w in self.writers.values():
                w.close()

    return EpochScalars()


def write_l2_selection(run: Path, selection: dict) -> None:
    """The exactly solved head has no epochs: its curve is held-out accuracy and loss along the
    L2 grid (step = grid index, strongest L2 first), written as the same kind of scalars."""
    order = sorted(range(len(selection["grid"])), key=lambda i: -selection["grid"][i])
    w = ScalarWriter(logdir(run, "head") / "l2_selection")
    for step, i in enumerate(order):
        for key in ("val_accuracy", "val_loss"):
            v = selection[key][i]
            if v == v:   # NaN when no held-out data
                w.scalar(f"heldout_{key[4:]}", v, step)
        w.scalar("l2", selection["grid"][i], step)
    w.scalar("chosen_l2", selection["l2"], 0)
    w.close()
