"""Read a ``.safetensors`` file (the format timm's hub publishes) into numpy arrays without torch.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor's name to
its dtype, shape and byte range, then the raw little-endian bytes. Nothing in it can run code;
this reader still checks every range against the file so a damaged file is one clear error.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsError(UserError):
    """A .safetensors file that is damaged or holds a tensor type numpy cannot take."""


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of the file as a float32 array (bfloat16 widened; integers kept)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise SafetensorsError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise SafetensorsError(f"{path}: header of {n} bytes runs past the file's {len(data)}: truncated or not "
                               "a safetensors file")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        raise SafetensorsError(f"{path}: header is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object: not a safetensors file")
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor(path, name, info, body)
    return out


def _tensor(path: Path, name: str, info: dict, body: memoryview) -> np.ndarray:
    try:
        dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if not all(type(v) is int and v >= 0 for v in (*shape, start, end)):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path}: tensor {name} has no dtype/shape/offsets: damaged header") from None
    if not 0 <= start <= end <= len(body):
        raise SafetensorsError(f"{path}: tensor {name} lies past the end of the file: truncated")
    raw = bytes(body[start:end])
    if dtype == "BF16":   # numpy has no bfloat16: its bits are the upper half of a float32
        arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in DTYPES:
        arr = np.frombuffer(raw, np.dtype(DTYPES[dtype]).newbyteorder("<"))
    else:
        raise SafetensorsError(f"{path}: tensor {name} has dtype {dtype}, which this reader does not take")
    if arr.size != int(np.prod(shape)):
        raise SafetensorsError(f"{path}: tensor {name} holds {arr.size} values for shape {shape}: damaged")
    arr = arr.reshape(shape)
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr.copy()
