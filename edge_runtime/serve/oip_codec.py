"""Reading and writing Open Inference Protocol (KServe v2) infer messages, with the protocol's
binary tensor data extension, free of any web framework: the HTTP router (serve.oip) and the gRPC
service (serve.grpc) both go through here, so a request means the same on either.

A request is a JSON object, optionally followed by raw tensor bytes: the JSON's length is given
by the ``Inference-Header-Content-Length`` header (HTTP) and each input that travels as bytes says
how many with ``parameters.binary_data_size``; the inputs' bytes follow one another in input order.
Binary data is little-endian, row-major; a BYTES element is a 4-byte little-endian length and the
bytes. Every malformed request is an ``HTTPError`` 400 naming what is wrong (never a 500):
tests/test_properties.py draws random ones.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from ..classifier import DEFAULT_TOP_K
from .http import HTTPError

MAX_BATCH = 64
OUTPUT_NAMES = ("scores", "labels")
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class ModelInput:
    """What the served model takes: its square size and whether its input tensor is float."""
    size: int
    takes_float: bool = False


@dataclass(frozen=True)
class Output:
    name: str
    binary: bool = False
    top_k: int = DEFAULT_TOP_K


@dataclass
class InferRequest:
    """A checked infer request: either ``pixels`` (N, S, S, 3), uint8 or float32, or ``encoded``
    image files; the outputs asked for, in order."""
    outputs: list[Output]
    pixels: np.ndarray | None = None
    encoded: list[bytes] = field(default_factory=list)
    id: str | None = None

    @property
    def batch(self) -> int:
        return len(self.encoded) if self.pixels is None else int(self.pixels.shape[0])


def parse_request(body: bytes, header_length: str | None, model: ModelInput) -> InferRequest:
    """The request in ``body`` (JSON, then binary tensor data when ``header_length`` is given)."""
    return parse_message(*split_body(body, header_length), model)


def parse_message(req: dict, blob: bytes, model: ModelInput) -> InferRequest:
    """A request's JSON object ``req`` and the binary tensor data ``blob`` that followed it."""
    inp = _one_input(req)
    raw = _binary_inputs(req["inputs"], blob)[0]
    outputs = _outputs(req)
    rid = req.get("id")
    rid = None if rid is None else str(rid)[:256]
    if inp["datatype"] == "BYTES":
        items = _encoded_from_bytes(raw, inp["shape"]) if raw is not None else _encoded_from_json(inp)
        return InferRequest(outputs=outputs, encoded=items, id=rid)
    return InferRequest(outputs=outputs, pixels=_pixels(inp, raw, model), id=rid)


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """(the JSON object, the bytes after it)."""
    if header_length is None:
        return _json_object(body), b""
    try:
        n = int(header_length)
    except ValueError:
        raise HTTPError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r:.40}") from None
    if not 0 <= n <= len(body):
        raise HTTPError(400, f"{HEADER_LENGTH} {n} is past the {len(body)}-byte body")
    return _json_object(body[:n]), body[n:]


def _json_object(text: bytes) -> dict:
    try:
        req = json.loads(text)
    except (ValueError, RecursionError):   # UnicodeDecodeError is a ValueError
        raise HTTPError(400, "request body is not JSON (the v2 infer request is a JSON object)") from None
    if not isinstance(req, dict):
        raise HTTPError(400, "the v2 infer request must be a JSON object")
    return req


def _is_int(x) -> bool:
    """A JSON integer (true/false are not: Python counts bool as int)."""
    return type(x) is int


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise HTTPError(400, f"{where}.parameters must be an object, got {params!r:.60}")
    return params


def _one_input(req: dict) -> dict:
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise HTTPError(400, "a v2 infer request needs \"inputs\": a list with one tensor (image or image_bytes)")
    inp = inputs[0]
    if not isinstance(inp, dict) or not {"name", "shape", "datatype"} <= set(inp):
        raise HTTPError(400, "each input needs name, shape and datatype, and data or parameters.binary_data_size")
    if inp["datatype"] not in ("UINT8", "FP32", "BYTES"):
        raise HTTPError(400, f"input datatype {inp['datatype']!r:.40} is not accepted: send UINT8 pixels "
                             "(shape [N, S, S, 3]) or BYTES encoded images")
    shape = inp["shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_is_int(d) and d >= 0 for d in shape)):
        raise HTTPError(400, f"input shape {shape!r:.60} must be a list of non-negative integers")
    return inp


def _binary_inputs(inputs: list, blob: bytes) -> list[bytes | None]:
    """Each input's binary data (None for an input whose data is in the JSON), taken from ``blob``
    in input order; every byte of ``blob`` must belong to an input."""
    out, offset = [], 0
    for k, inp in enumerate(inputs):
        size = _parameters(inp, f"inputs[{k}]").get("binary_data_size")
        if size is None:
            if "data" not in inp:
                raise HTTPError(400, f"inputs[{k}] has neither data nor parameters.binary_data_size")
            out.append(None)
            continue
        if not _is_int(size) or size < 0:
            raise HTTPError(400, f"inputs[{k}].parameters.binary_data_size must be a non-negative integer")
        if offset + size > len(blob):
            raise HTTPError(400, f"inputs[{k}].parameters.binary_data_size {size} is past the {len(blob) - offset} "
                                 f"byte(s) of binary data left after the JSON header")
        out.append(blob[offset:offset + size])
        offset += size
    if offset != len(blob):
        raise HTTPError(400, f"{len(blob) - offset} byte(s) after the JSON header belong to no input "
                             f"(the inputs' binary_data_size add up to {offset})")
    return out


def _outputs(req: dict) -> list[Output]:
    all_binary = _parameters(req, "request").get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise HTTPError(400, "parameters.binary_data_output must be true or false")
    wanted = req.get("outputs") or [{"name": "scores"}]
    if not isinstance(wanted, list):
        raise HTTPError(400, "\"outputs\" must be a list")
    outputs = []
    for k, o in enumerate(wanted):
        if not isinstance(o, dict) or o.get("name") not in OUTPUT_NAMES:
            raise HTTPError(400, f"unknown output {o!r:.80}; this model has scores and labels")
        params = _parameters(o, f"outputs[{k}]")
        binary = params.get("binary_data", all_binary)
        if not isinstance(binary, bool):
            raise HTTPError(400, f"outputs[{k}].parameters.binary_data must be true or false")
        top_k = params.get("top_k", DEFAULT_TOP_K)
        if o["name"] == "labels" and (not _is_int(top_k) or top_k < 1):
            raise HTTPError(400, f"labels top_k must be a positive integer, got {top_k!r:.40}")
        if o["name"] not in (x.name for x in outputs):
            outputs.append(Output(o["name"], binary, top_k if o["name"] == "labels" else DEFAULT_TOP_K))
    return outputs


def _pixels(inp: dict, raw: bytes | None, model: ModelInput) -> np.ndarray:
    s, shape, dtype = model.size, inp["shape"], inp["datatype"]
    if not (len(shape) == 4 and shape[1:] == [s, s, 3] and 1 <= shape[0] <= MAX_BATCH):
        raise HTTPError(400, f"input shape {shape} does not match the model: send [N, {s}, {s}, 3] "
                             f"(N from 1 to {MAX_BATCH}), RGB, already resized")
    if dtype == "FP32" and not model.takes_float:
        raise HTTPError(400, "this model takes UINT8 pixels: send datatype UINT8 (FP32 is for a float-input model)")
    n = int(np.prod(shape))
    if raw is not None:
        width = 1 if dtype == "UINT8" else 4
        if len(raw) != n * width:
            raise HTTPError(400, f"binary_data_size {len(raw)} does not match shape {shape} of {dtype} "
                                 f"({n * width} bytes)")
        arr = np.frombuffer(raw, np.uint8 if dtype == "UINT8" else "<f4").reshape(shape)
        return arr if dtype == "UINT8" else _pixel_levels(arr.astype(np.float32))
    return _pixels_from_json(inp.get("data"), shape, dtype, n)


def _pixels_from_json(data, shape: list, dtype: str, n: int) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):   # ragged, huge, deeply nested
        raise HTTPError(400, f"{dtype} data must be numbers 0..255") from None
    if arr.size != n:
        raise HTTPError(400, f"data has {arr.size} values, shape {shape} needs {n}")
    if dtype == "FP32":
        if arr.dtype.kind not in "iuf":
            raise HTTPError(400, "FP32 data must be numbers 0..255")
        return _pixel_levels(arr.reshape(shape).astype(np.float32))
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        # floats (0.7 is not a pixel level), booleans, strings and too-large integers (object)
        raise HTTPError(400, "UINT8 data must be integers 0..255")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise HTTPError(400, "UINT8 data must be integers 0..255")
    return arr.reshape(shape).astype(np.uint8)


def _pixel_levels(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all() or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise HTTPError(400, "FP32 pixels must be finite numbers 0..255")
    return arr


def _encoded_from_json(inp: dict) -> list[bytes]:
    data = inp.get("data")
    if not isinstance(data, list) or not data or len(data) > MAX_BATCH:
        raise HTTPError(400, f"BYTES data must be a list of 1 to {MAX_BATCH} base64-encoded image files")
    _check_bytes_shape(inp["shape"], len(data))
    out = []
    for k, d in enumerate(data):
        if not isinstance(d, str):
            raise HTTPError(400, f"inputs[0].data[{k}]: expected a base64 string")
        try:
            out.append(base64.b64decode(d, validate=True))
        except (binascii.Error, ValueError):
            raise HTTPError(400, f"inputs[0].data[{k}]: not valid base64") from None
    return out


def _encoded_from_bytes(raw: bytes, shape: list) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw) or len(items) >= MAX_BATCH:
            raise HTTPError(400, f"binary BYTES data is not 1 to {MAX_BATCH} length-prefixed elements")
        (n,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + n > len(raw):
            raise HTTPError(400, f"binary BYTES element {len(items)} says {n} bytes; {len(raw) - offset - 4} are left")
        items.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    if not items:
        raise HTTPError(400, "binary BYTES data holds no element: send 1 or more encoded images")
    _check_bytes_shape(shape, len(items))
    return items


def _check_bytes_shape(shape: list, n: int) -> None:
    if shape not in ([n], [n, 1]):
        raise HTTPError(400, f"BYTES input shape {shape} does not match its {n} element(s): use [{n}]")


# -- answers ----------------------------------------------------------------------------------------

def encode_response(req: InferRequest, scores: np.ndarray, labels: list[str], meta: dict) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): the outputs asked for, each as JSON data or as binary
    data after the JSON header. ``meta``: model_name, model_version and parameters."""
    doc, blobs = response_parts(req, scores, labels, meta)
    header = json.dumps(doc).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def response_parts(req: InferRequest, scores: np.ndarray, labels: list[str], meta: dict) -> tuple[dict, list[bytes]]:
    """(the answer's JSON object, the binary data of its binary outputs, in output order)."""
    scores = scores.astype("<f4")
    outs, blobs = [], []
    for o in req.outputs:
        if o.name == "scores":
            tensor = {"name": "scores", "datatype": "FP32", "shape": list(scores.shape)}
        else:
            k = min(o.top_k, scores.shape[1])
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            names = [labels[i] for i in order.ravel()]
            tensor = {"name": "labels", "datatype": "BYTES", "shape": [scores.shape[0], k]}
        if o.binary:
            blob = scores.tobytes() if o.name == "scores" else bytes_tensor(names)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [round(float(v), 6) for v in scores.ravel()] if o.name == "scores" else names
        outs.append(tensor)
    doc = {**meta, "outputs": outs}
    if req.id is not None:
        doc["id"] = req.id
    return doc, blobs


def bytes_tensor(items: list) -> bytes:
    """A BYTES tensor's binary form: each element's 4-byte little-endian length, then its bytes."""
    parts = []
    for item in items:
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)
