"""A Keras model as a SavedModel with a fixed batch-1 signature, and as a float32 .tflite: the
one export both the trainer (its LiteRT feature extractor) and the converter (every artifact)
start from, kept on the trainer's floor so the trainer never imports the converter."""
from __future__ import annotations

import tempfile
from pathlib import Path


def export_saved_model(model, path: Path) -> None:
    """Export ``model`` as a SavedModel with a fixed batch-1 float signature named ``image``
    (a fixed batch keeps the whole graph in one XNNPACK partition: EfficientNet's squeeze-excite
    otherwise leaves dynamic reshapes that split it)."""
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])
    sig = [tf.TensorSpec((1, size, size, 3), tf.float32, name="image")]
    model.export(str(path), format="tf_saved_model", verbose=False, input_signature=sig)


def float_tflite_bytes(model) -> bytes:
    """``model`` as an fp32 .tflite flatbuffer with float input and output, builtin ops only."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm")
        c = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return c.convert()
