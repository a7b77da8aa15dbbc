"""Typed readers of a run folder's files: the one place that parses config.json, metrics.json,
state.json and predictions/*.npz. Every reader (convert, eval, runs, runs compare, train --resume,
bench) goes through these, so a damaged or hand-edited file is one UserError naming the file and
the field, never a KeyError three modules away. The folder's layout itself is trainer.runs.rundir.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError
from edge_runtime.image import RESIZE_METHOD

from . import rundir as R

FIX = "restore it from a full copy of the run, or train again (edgetl train DATA --out RUN)"


def _bad(path: Path, field: str, want: str, got) -> UserError:
    shown = repr(got)
    return UserError(f"{path}: {field or 'the file'} must be {want}, not {shown[:40]}{'...' if len(shown) > 40 else ''}; {FIX}")


def _object(path: Path, value, field: str = "") -> dict:
    if not isinstance(value, dict):
        raise _bad(path, field, "a JSON object", value)
    return value


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


@dataclass(frozen=True)
class RunConfig:
    """RUN/config.json: the training settings as trained (``train``), the resolved backbone facts,
    the model's input and where it trained (``hardware``)."""
    path: Path
    train: dict
    backbone: dict
    input: dict
    hardware: dict

    @property
    def resize(self) -> str:
        return self.input.get("resize", RESIZE_METHOD)

    @property
    def precision_policy(self) -> str:
        return self.hardware.get("precision_policy", "float32")

    @property
    def backbone_name(self) -> str:
        return self.backbone.get("name") or self.train.get("backbone") or "?"

    @property
    def size(self) -> int:
        return int(self.backbone.get("size") or self.train.get("size") or self.input.get("size") or 0)

    @property
    def alpha(self) -> float | None:
        return self.backbone.get("alpha", self.train.get("alpha"))

    def train_config(self):
        """The TrainConfig the run was trained with (train --resume rebuilds the same model)."""
        from ..config import TrainConfig

        try:
            return TrainConfig.from_dict(self.train)
        except TypeError as e:
            raise UserError(f"{self.path}: 'train' does not hold a training config ({e}); {FIX}") from None

    def to_dict(self) -> dict:
        return {"train": self.train, "backbone": self.backbone, "input": self.input, "hardware": self.hardware}


def read_config(run: Path) -> RunConfig:
    path = Path(run) / R.CONFIG
    data = _object(path, R.read_json(path))
    train = _object(path, data.get("train"), "'train'")
    parts = {k: _object(path, data.get(k, {}), f"'{k}'") for k in ("backbone", "input", "hardware")}
    for field, where, kind in (("resize", "input", str), ("name", "backbone", str), ("precision_policy", "hardware", str),
                               ("backbone", "train", str), ("data", "train", str)):
        section = train if where == "train" else parts[where]
        if field in section and not isinstance(section[field], kind):
            raise _bad(path, f"'{where}.{field}'", "text", section[field])
    for field in ("size", "alpha"):
        for where, section in (("backbone", parts["backbone"]), ("train", train), ("input", parts["input"])):
            v = section.get(field)
            if v is not None and not (_is_number(v) and v > 0):
                raise _bad(path, f"'{where}.{field}'", "a positive number", v)
    return RunConfig(path=path, train=train, **parts)


def read_metrics(run: Path) -> dict:
    """RUN/metrics.json ({} before evaluation). Each report (test, val, data:...) is checked for
    the fields readers use: accuracy and class-averaged accuracy in 0..1, n, per-class dicts."""
    path = Path(run) / R.METRICS
    if not path.exists():
        return {}
    data = _object(path, R.read_json(path))
    for key in ("test", "val"):
        if key in data:
            _check_report(path, key, data[key])
    return data


def _check_report(path: Path, key: str, rep) -> None:
    _object(path, rep, f"'{key}'")
    for field in ("accuracy", "class_avg_accuracy"):
        v = rep.get(field)
        if v is not None and not (_is_number(v) and 0 <= v <= 1):
            raise _bad(path, f"'{key}.{field}'", "a number from 0 to 1", v)
    if "n" in rep and not (isinstance(rep["n"], int) and not isinstance(rep["n"], bool) and rep["n"] >= 0):
        raise _bad(path, f"'{key}.n'", "a count", rep["n"])
    per = _object(path, rep.get("per_class", {}), f"'{key}.per_class'")
    for c, v in per.items():
        _object(path, v, f"'{key}.per_class.{c}'")
    wrong = rep.get("misclassified", [])
    if not isinstance(wrong, list) or not all(isinstance(m, dict) and isinstance(m.get("file"), str)
                                              and isinstance(m.get("predicted"), str) for m in wrong):
        raise _bad(path, f"'{key}.misclassified'", "a list of {file, predicted}", wrong)


def read_state(run: Path) -> dict:
    """RUN/state.json ({} before training started): which phase finished last."""
    path = Path(run) / R.STATE
    if not path.exists():
        return {}
    data = _object(path, R.read_json(path))
    if "phase" in data and not isinstance(data["phase"], str):
        raise _bad(path, "'phase'", "a phase name", data["phase"])
    return data


def read_predictions(run: Path, split_name: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(files, y, probs, classes) of RUN/predictions/<split>.npz, checked: one row of class
    probabilities per file and every label a class index."""
    path = Path(run) / R.PREDICTIONS / f"{split_name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            files, y, probs, classes = (np.asarray(z[k]) for k in ("files", "y", "probs", "classes"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; score the run again (edgetl eval {run})") from None
    except Exception as e:  # noqa: BLE001 - zip, pickle and key errors all mean "not our file"
        raise UserError(f"{path}: damaged ({type(e).__name__}); score the run again (edgetl eval {run})") from None
    n, k = len(files), len(classes)
    ok = (probs.ndim == 2 and probs.shape == (n, k) and probs.dtype.kind == "f" and y.shape == (n,)
          and y.dtype.kind in "iu" and (n == 0 or (y.min() >= 0 and y.max() < k)))
    if not ok:
        raise UserError(f"{path}: its files, labels, probabilities and classes do not fit together "
                        f"({n} files, {k} classes, probabilities {probs.shape}); score the run again (edgetl eval {run})")
    return files, y, probs, [str(c) for c in classes]


class Run:
    """One run folder, read only through the typed readers above (each file parsed when asked,
    every damage one UserError naming the file and the field)."""

    def __init__(self, path):
        self.path = Path(path)

    def config(self) -> RunConfig:
        return read_config(self.path)

    def labels(self) -> list[str]:
        return R.read_labels(self.path)   # checked against the class order the run was trained with

    def metrics(self) -> dict:
        return read_metrics(self.path)

    def state(self) -> dict:
        return read_state(self.path)

    def predictions(self, split_name: str = "test"):
        return read_predictions(self.path, split_name)

    def split(self, data_root=None):
        """The run's split; its test photos are checked against the fingerprint it recorded."""
        from ..data.split import Split

        return Split.of_run(self.path, data_root)
