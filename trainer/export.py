"""A Keras model as a SavedModel with a fixed batch-1 signature, and as a float32 .tflite: the
one export both the trainer (its LiteRT feature extractor) and the converter (every artifact)
start from, kept on the trainer's floor so the trainer never imports the converter."""
from __future__ import annotations

import tempfile
from pathlib import Path


def export_saved_model(model, path: Path) -> None:
    """Export ``model`` as a SavedModel with a fixed batch-1 float signature named ``image``
    (a fixed batch keeps the whole graph in one XNNPACK partition: EfficientNet's squeeze-excite
    otherwise leaves dynamic reshapes that split it).

    One traced inference function over the model's variables, nothing else: Keras' own
    ``model.export`` also walks and serialises every layer object, which made the export 2-3x
    slower (MobileNetV2 0.35@96: 7-9 s against 2-3 s) and the SavedModel slower to load for the
    converter, for a .tflite that differs only in its output tensor's name."""
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])

    @tf.function(input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32, name="image")])
    def serve(image):
        return {"output_0": model(image, training=False)}

    archive = tf.Module()
    archive.variables_ = [getattr(v, "value", v) for v in model.variables]   # Keras variable -> tf.Variable
    archive.serve = serve
    tf.saved_model.save(archive, str(path), signatures={"serving_default": serve})


def float_tflite_bytes(model) -> bytes:
    """``model`` as an fp32 .tflite flatbuffer with float input and output, builtin ops only."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm")
        c = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return c.convert()
