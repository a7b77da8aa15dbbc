"""A standard Open Inference Protocol client (Triton's `tritonclient`, default settings: binary
tensors on) talking to edge-serve, as a user's own client machine would. Run by tests/test_oip.py
in a virtual environment of its own (the client library pins numpy/protobuf versions of its own),
it prints one JSON object of what the server answered.

    python oip_client.py check http|grpc ADDRESS MODEL KEY PIXELS.npy PHOTO...
    python oip_client.py flood http|grpc ADDRESS MODEL KEY N PHOTO   (N requests at once: their statuses)
"""
from __future__ import annotations

import json
import sys

import numpy as np


def _library(protocol: str, key: str):
    if protocol == "http":
        import tritonclient.http as tc
        return tc, {"Authorization": f"Bearer {key}"}
    import tritonclient.grpc as tc
    return tc, {"authorization": f"Bearer {key}"}


def flood(protocol: str, address: str, model: str, key: str, n: str, photo: str) -> dict:
    """N infer calls (each a batch of 16 copies of PHOTO) in flight at once; the status of each
    (200 / OK, or the error's status)."""
    tc, headers = _library(protocol, key)
    from tritonclient.utils import InferenceServerException

    inp = tc.InferInput("image_bytes", [16], "BYTES")
    inp.set_data_from_numpy(np.array([open(photo, "rb").read()] * 16, dtype=np.object_))
    if protocol == "http":
        client = tc.InferenceServerClient(url=address, concurrency=int(n), network_timeout=60)
        pending = [client.async_infer(model, [inp], headers=headers) for _ in range(int(n))]
        statuses = []
        for p in pending:
            try:
                p.get_result()
                statuses.append("200")
            except InferenceServerException as e:
                statuses.append(str(e.status()))
        return {"statuses": statuses}
    import queue

    done: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(url=address)
    for _ in range(int(n)):
        client.async_infer(model, [inp], callback=lambda result, error: done.put(error), headers=headers)
    errors = [done.get(timeout=60) for _ in range(int(n))]
    return {"statuses": ["OK" if e is None else str(e.status()) for e in errors]}


def check(protocol: str, address: str, model: str, key: str, pixels_file: str, *photos: str) -> dict:
    tc, headers = _library(protocol, key)
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=address)
    out: dict = {"live": client.is_server_live(headers=headers), "ready": client.is_server_ready(headers=headers),
                 "model_ready": client.is_model_ready(model, headers=headers)}
    meta = client.get_server_metadata(headers=headers)
    model_meta = client.get_model_metadata(model, headers=headers)
    if protocol == "grpc":   # protobuf messages -> the JSON shape the HTTP client returns
        from google.protobuf.json_format import MessageToDict
        meta, model_meta = MessageToDict(meta), MessageToDict(model_meta)
    out["server"], out["model"] = meta, model_meta

    def infer(inp, outputs=None, **kw):
        result = client.infer(model, [inp], outputs=outputs, headers=kw.pop("headers", headers), **kw)
        names = [o.name() for o in outputs] if outputs else ["scores"]
        return {n: _plain(result.as_numpy(n)) for n in names}

    # encoded photos as a BYTES tensor (binary data by default), outputs left to the server's default
    encoded = np.array([open(p, "rb").read() for p in photos], dtype=np.object_)
    inp = tc.InferInput("image_bytes", [len(photos)], "BYTES")
    inp.set_data_from_numpy(encoded)
    out["bytes"] = infer(inp)
    # model-sized pixels as a UINT8 tensor, both outputs asked for (binary by default)
    pixels = np.load(pixels_file)
    inp = tc.InferInput("image", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    out["uint8"] = infer(inp, [tc.InferRequestedOutput("scores"), tc.InferRequestedOutput("labels")])
    out["errors"] = {
        "unknown_model": _status(lambda: client.get_model_metadata("no-such-model", headers=headers),
                                 InferenceServerException),
        "bad_key": _status(lambda: client.get_model_metadata(model, headers={k: "Bearer wrong" for k in headers}),
                           InferenceServerException),
    }
    return out


def _plain(arr):
    if arr is None:
        return None
    if arr.dtype == np.object_:
        return [[b.decode() if isinstance(b, bytes) else str(b) for b in row] for row in arr.reshape(arr.shape[0], -1)]
    return arr.astype(float).tolist()


def _status(call, error_type) -> str:
    try:
        call()
    except error_type as e:
        return str(e.status())
    return "no error"


if __name__ == "__main__":
    print(json.dumps({"check": check, "flood": flood}[sys.argv[1]](*sys.argv[2:])))
