"""Read a PyTorch ``state_dict`` file into numpy arrays without torch and without running its pickle.

PyTorch's legacy (pre-zip) serialization is five pickles in a row followed by raw storages:
magic number, protocol version, system info, the object itself (tensors appear as persistent ids
naming a storage), the list of storage keys, then for each key an int64 element count and the
raw little-endian bytes. A ``.pth`` pickle can name any importable callable, so loading one with
``pickle`` can execute arbitrary code; this reader resolves only the handful of names a
state_dict needs and refuses everything else before anything is called.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError
from edge_runtime.manifest import sha256_file

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class PthError(UserError):
    """A .pth file that is damaged, not a state_dict, or asks for code we will not run."""


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _TensorRef:
    """What ``_rebuild_tensor_v2`` would have built: a view into a storage read later."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, tuple) or not storage or storage[0] != "__storage__":
        raise PthError("tensor without a storage: not a plain state_dict")
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f)
        self.path = path
        self.storages: dict[str, tuple[_StorageType, int]] = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise PthError(f"{self.path}: refuses to load: the pickle references {module}.{name}, which a "
                       "state_dict never needs (only tensors and OrderedDict are allowed)")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise PthError(f"{self.path}: unsupported persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid[:5]
        self.storages[str(key)] = (stype, int(numel))
        return ("__storage__", str(key))


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` from a legacy-format PyTorch state_dict file.

    With ``sha256`` the file must match it byte for byte (tampering is refused before parsing).
    """
    path = Path(path)
    if not path.is_file():
        raise PthError(f"{path}: file not found")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise PthError(f"{path}: sha256 {got[:16]}... does not match the expected {sha256[:16]}...: "
                           "the file is damaged or not the published checkpoint; reinstall the package")
    data = path.read_bytes()
    if data[:2] == b"PK":
        raise PthError(f"{path}: zip-format checkpoint (torch >= 1.6 default); only the legacy format "
                       "is supported here")
    f = io.BytesIO(data)
    try:
        header = _Unpickler(f, path)  # every pickle goes through the restricted loader
        if header.load() != MAGIC:
            raise PthError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        if header.load() != PROTOCOL_VERSION:
            raise PthError(f"{path}: unsupported PyTorch serialization protocol")
        header.load()  # system info: {'little_endian': True, ...}
        unp = _Unpickler(f, path)
        obj = unp.load()
        keys = _Unpickler(f, path).load()
    except PthError:
        raise
    except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError) as e:
        raise PthError(f"{path}: damaged or truncated checkpoint ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise PthError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(unp.storages):
        raise PthError(f"{path}: storage list does not match the tensors: damaged checkpoint")

    buffers = {}
    pos = f.tell()
    for key in map(str, keys):
        stype, numel = unp.storages[key]
        if pos + 8 > len(data):
            raise PthError(f"{path}: truncated: storage {key} is missing")
        (count,) = struct.unpack_from("<q", data, pos)
        nbytes = count * stype.dtype.itemsize
        if count != numel or pos + 8 + nbytes > len(data):
            raise PthError(f"{path}: truncated or damaged at storage {key} "
                           f"({count} elements recorded, {numel} expected)")
        buffers[key] = np.frombuffer(data, stype.dtype, count, pos + 8)
        pos += 8 + nbytes
    if pos != len(data):
        raise PthError(f"{path}: {len(data) - pos} unexpected bytes after the last storage: damaged checkpoint")

    out = {}
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef):
            raise PthError(f"{path}: entry {name!r} is a {type(ref).__name__}, not a tensor")
        buf = buffers[ref.storage[1]]
        span = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride)) + 1 if ref.size else ref.offset + 1
        if min(ref.size, default=1) > 0 and span > buf.size:
            raise PthError(f"{path}: tensor {name!r} reaches past its storage: damaged checkpoint")
        view = np.lib.stride_tricks.as_strided(
            buf[ref.offset:], shape=ref.size, strides=[s * buf.itemsize for s in ref.stride])
        out[str(name)] = np.array(view, dtype=buf.dtype.newbyteorder("="))
    return out
