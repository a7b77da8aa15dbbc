"""What a precision is, in one place: its converter settings, the tensor types a valid artifact of
it has, its file name and its `edgetl convert` flag. The converter, the deploy-folder policy, the
CLI and `edgetl bench` all read this registry."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IO_TYPES = ("uint8", "int8", "float")


@dataclass(frozen=True)
class Precision:
    name: str
    help: str
    # (TFLiteConverter, io, representative dataset) -> None: set the converter up for this precision
    setup: Callable
    # (tensor dtypes in the model, input dtype, io) -> does the artifact hold what the name promises?
    valid: Callable[[set, str, str], bool]

    @property
    def file(self) -> str:
        return f"model_{self.name}.tflite"

    @property
    def flag(self) -> str:
        return f"--{self.name}"


def _fp16(c, io, calib):
    import tensorflow as tf

    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]


def _dynamic(c, io, calib):
    import tensorflow as tf

    c.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(c, io, calib):
    import tensorflow as tf

    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = calib
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float":
        c.inference_input_type = c.inference_output_type = {"uint8": tf.uint8, "int8": tf.int8}[io]


def _full_int8(kinds, i, io) -> bool:
    return "int8" in kinds and "float16" not in kinds and i == ("float32" if io == "float" else io)


REGISTRY: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "Plain float32.", lambda c, io, calib: None,
              lambda kinds, i, io: not kinds & {"int8", "float16"} and i == "float32"),
    Precision("fp16", "float16 weights.", _fp16, lambda kinds, i, io: "float16" in kinds and i == "float32"),
    Precision("dynamic", "Dynamic range (int8 weights, float activations).", _dynamic,
              lambda kinds, i, io: "int8" in kinds and i == "float32"),
    Precision("int8", "Full-integer int8 (calibrated on training images).", _int8, _full_int8),
    Precision("int8-qat", "Full-integer int8 after a short quantization-aware fine-tune (same operators and "
                          "latency as --int8; minutes of training, see --qat).", _int8, _full_int8),
)}
PRECISIONS = tuple(REGISTRY)
INT8 = ("int8", "int8-qat")     # full-integer precisions: calibration photos, validation split, int8 gates
FILES = tuple(p.file for p in REGISTRY.values())
