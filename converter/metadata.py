"""Standard TFLite metadata, so Android-class clients name the classes with no extra files.

An artifact carries (1) a ``ModelMetadata`` flatbuffer (file identifier ``M001``) in a model
buffer referenced by a ``TFLITE_METADATA`` entry: image properties (RGB, input size),
normalisation and value range of the input, the output's meaning and range; and (2) a zip
appended after the model holding ``labels.txt`` (``TENSOR_AXIS_LABELS`` of the output) and
``edgetl.json`` (resize method, whether outputs are probabilities), which also makes a bare
``.tflite`` self-describing for ``edge_runtime``.

The schema classes are the pure-Python flatbuffers object API that ``mediapipe`` ships
(``mediapipe.tasks.metadata``); its metadata *writer* modules need a native module absent from
its wheels, and tflite-support pins protobuf < 4, so the populator lives here.
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from edge_runtime.errors import UserError

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
INFO_FILE = "edgetl.json"
MIN_PARSER_VERSION = "1.0.0"


def _schemas():
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as md
        from mediapipe.tasks.metadata import schema_py_generated as tfl
    except ImportError:
        raise UserError("writing TFLite metadata needs mediapipe's schema classes: pip install 'edgetl[train]'") from None
    return md, tfl


def model_metadata(labels: list[str], size: int, input_dtype: str, probabilities: bool,
                   name: str, description: str, version: str):
    """The ``ModelMetadataT`` for an image classifier taking RGB 0..255 at ``size``."""
    md, _ = _schemas()
    image = md.TensorMetadataT()
    image.name = "image"
    image.description = (f"RGB image, {size}x{size}, pixel values 0..255 ({input_dtype}); the model "
                         "normalises internally, so clients only resize")
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    image.content.contentProperties.defaultSize = md.ImageSizeT()
    image.content.contentProperties.defaultSize.width = size
    image.content.contentProperties.defaultSize.height = size
    norm = md.ProcessUnitT()
    norm.optionsType = md.ProcessUnitOptions.NormalizationOptions
    norm.options = md.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [0.0], [1.0]   # identity: normalisation is baked in
    image.processUnits = [norm]
    image.stats = md.StatsT()
    image.stats.min, image.stats.max = [0.0], [255.0]

    scores = md.TensorMetadataT()
    scores.name = "probabilities" if probabilities else "logits"
    scores.description = ("probability of each class" if probabilities else
                          "score (logit) of each class; softmax gives probabilities")
    scores.content = md.ContentT()
    scores.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    scores.content.contentProperties = md.FeaturePropertiesT()
    scores.content.range = md.ValueRangeT()
    scores.content.range.min = scores.content.range.max = 1   # the class axis
    if probabilities:
        scores.stats = md.StatsT()
        scores.stats.min, scores.stats.max = [0.0], [1.0]
    lab = md.AssociatedFileT()
    lab.name = LABELS_FILE
    lab.description = f"{len(labels)} class names, one per output index"
    lab.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [lab]

    sub = md.SubGraphMetadataT()
    sub.inputTensorMetadata, sub.outputTensorMetadata = [image], [scores]
    meta = md.ModelMetadataT()
    meta.name, meta.description, meta.version = name, description, version
    meta.author = "edgetl"
    meta.subgraphMetadata = [sub]
    info = md.AssociatedFileT()
    info.name = INFO_FILE
    info.description = "edgetl preprocessing facts: resize method, output meaning"
    info.type = md.AssociatedFileType.UNKNOWN
    meta.associatedFiles = [info]
    meta.minParserVersion = MIN_PARSER_VERSION
    return meta


def populate(model: bytes, labels: list[str], size: int, input_dtype: str, probabilities: bool,
             resize: str, name: str = "edgetl image classifier", *, description: str = "",
             version: str = "1") -> bytes:
    """``model`` with metadata and associated files; an existing ``TFLITE_METADATA`` is replaced."""
    import flatbuffers

    md, tfl = _schemas()
    meta = model_metadata(labels, size, input_dtype, probabilities, name, description, version)
    b = flatbuffers.Builder(1024)
    b.Finish(meta.Pack(b), file_identifier=b"M001")
    meta_buf = bytes(b.Output())

    m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(bytearray(model), 0))
    m.metadata = [e for e in (m.metadata or []) if _name(e.name) != METADATA_NAME]
    buf = tfl.BufferT()
    buf.data = np.frombuffer(meta_buf, np.uint8)
    m.buffers.append(buf)
    entry = tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(m.buffers) - 1
    m.metadata.append(entry)
    b = flatbuffers.Builder(len(model) + len(meta_buf) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")

    out = io.BytesIO(bytes(b.Output()))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as z:
        z.writestr(LABELS_FILE, "\n".join(labels) + "\n")
        z.writestr(INFO_FILE, json.dumps({"resize": resize, "probabilities": probabilities,
                                          "input": {"size": size, "range": [0, 255], "color": "RGB"}}))
    return out.getvalue()


def _name(n) -> str:
    return n.decode() if isinstance(n, bytes) else str(n or "")


def read_metadata(model: bytes) -> dict:
    """What a client sees: the ``ModelMetadata`` as a dict-like summary (for tests and `inspect`)."""
    md, tfl = _schemas()
    m = tfl.Model.GetRootAsModel(bytearray(model), 0)
    for i in range(m.MetadataLength()):
        e = m.Metadata(i)
        if _name(e.Name()) == METADATA_NAME:
            data = m.Buffers(e.Buffer()).DataAsNumpy().tobytes()
            if not md.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
                raise UserError("TFLITE_METADATA buffer does not carry the M001 identifier")
            meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(data, 0))
            sub = meta.subgraphMetadata[0]
            inp, outp = sub.inputTensorMetadata[0], sub.outputTensorMetadata[0]
            return {
                "name": _name(meta.name), "min_parser_version": _name(meta.minParserVersion),
                "input": {"name": _name(inp.name),
                          "size": inp.content.contentProperties.defaultSize.width,
                          "color_space": inp.content.contentProperties.colorSpace,
                          "mean": list(inp.processUnits[0].options.mean),
                          "std": list(inp.processUnits[0].options.std),
                          "min": list(inp.stats.min), "max": list(inp.stats.max)},
                "output": {"name": _name(outp.name),
                           "files": [(_name(f.name), f.type) for f in outp.associatedFiles]},
            }
    raise UserError("no TFLITE_METADATA in this model")


