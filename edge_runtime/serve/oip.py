"""The Open Inference Protocol (KServe v2) REST subset: server and model metadata, health, and
infer on UINT8 pixel tensors or BYTES encoded images; and the parsers of its requests, which
answer every malformed request with a 400 (tests/test_properties.py draws random ones)."""
from __future__ import annotations

import base64
import binascii
import json
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .. import edgetl_version
from ..classifier import DEFAULT_TOP_K
from .http import HTTPError
from .pool import Generation


def router(state) -> APIRouter:
    """``state``: the app's ServeState."""
    router = APIRouter()

    @router.get("/v2", summary="Server metadata")
    async def server_meta():
        return {"name": "edge-serve", "version": edgetl_version(), "extensions": ["model_repository"]}

    @router.get("/v2/health/live")
    async def live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready():
        ok = state.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/v2/models/{model}")
    async def model_meta(model: str):
        return _metadata(state.name, state.check_model(model))

    @router.get("/v2/models/{model}/versions/{version}")
    async def model_meta_version(model: str, version: str):
        return _metadata(state.name, state.check_model(model, version))

    @router.get("/v2/models/{model}/ready")
    async def model_ready(model: str):
        state.check_model(model)
        return {"name": state.name, "ready": True}

    @router.post("/v2/models/{model}/infer")
    async def model_infer(model: str, request: Request):
        return await _infer_v2(model, None, request)

    @router.post("/v2/models/{model}/versions/{version}/infer")
    async def model_infer_version(model: str, version: str, request: Request):
        return await _infer_v2(model, version, request)

    async def _infer_v2(model: str, version: str | None, request: Request):
        gen = state.check_model(model, version)
        try:
            body = await state.read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        req = _json_request(body)
        inp, outputs, top_k = _parse_infer(req, gen)
        deadline = time.monotonic() + state.cfg.timeout
        if inp["datatype"] == "BYTES":
            items = _decode_bytes(inp)
            prepares = [state.prepare_encoded(d, f"inputs[0].data[{k}]") for k, d in enumerate(items)]
        else:
            arr = _tensor(inp, gen)
            prepares = [_prepare_tensor(arr[k]) for k in range(arr.shape[0])]
        used, all_scores, _ = await state.infer(prepares, deadline)
        scores = np.stack(all_scores).astype(np.float32)
        out = []
        if "scores" in outputs:
            out.append({"name": "scores", "datatype": "FP32", "shape": list(scores.shape),
                        "data": [round(float(v), 6) for v in scores.ravel()]})
        if "labels" in outputs:
            k = min(top_k, scores.shape[1])
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            out.append({"name": "labels", "datatype": "BYTES", "shape": [scores.shape[0], k],
                        "data": [used.first.labels[i] for i in order.ravel()]})
        resp = {"model_name": state.name, "model_version": str(used.number), "outputs": out,
                "parameters": {"sha256": used.sha256}}
        if "id" in req:
            resp["id"] = req["id"]
        return JSONResponse(resp)

    return router


def _metadata(name: str, gen: Generation) -> dict:
    clf = gen.first
    s = clf.size
    return {
        "name": name, "versions": [str(gen.number)], "platform": "tflite",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, s, s, 3]},
                   {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, len(clf.labels)]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}],
        "parameters": {"labels": clf.labels, "sha256": gen.sha256, "precision": gen.precision,
                       "resize": clf.resize_method,
                       "input_note": "image: RGB uint8 HWC at the model size, batch first; image_bytes: "
                                     "base64-encoded JPEG/PNG files (any size, resized like edge-predict)"},
    }


def _json_request(body: bytes):
    """The parsed body of a v2 infer request, or 400 (not JSON, nested past the parser's depth)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):   # UnicodeDecodeError is a ValueError
        raise HTTPError(400, "request body is not JSON (the v2 infer request is a JSON object)") from None


def _is_int(x) -> bool:
    """A JSON integer (true/false are not: Python counts bool as int)."""
    return type(x) is int


def _parse_infer(req, gen: Generation):
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise HTTPError(400, "a v2 infer request needs \"inputs\": a list with one tensor (image or image_bytes)")
    inp = req["inputs"][0]
    if not isinstance(inp, dict) or not {"name", "shape", "datatype", "data"} <= set(inp):
        raise HTTPError(400, "each input needs name, shape, datatype and data")
    if inp["datatype"] not in ("UINT8", "BYTES"):
        raise HTTPError(400, f"input datatype {inp['datatype']!r} is not accepted: send UINT8 pixels "
                             "(shape [N, S, S, 3]) or BYTES encoded images")
    wanted = req.get("outputs") or [{"name": "scores"}]
    if not isinstance(wanted, list):
        raise HTTPError(400, "\"outputs\" must be a list")
    outputs, top_k = set(), DEFAULT_TOP_K
    for o in wanted:
        if not isinstance(o, dict) or o.get("name") not in ("scores", "labels"):
            raise HTTPError(400, f"unknown output {o!r}; this model has scores and labels")
        outputs.add(o["name"])
        params = o.get("parameters", {})
        if not isinstance(params, dict):
            raise HTTPError(400, f"outputs[].parameters must be an object, got {params!r:.60}")
        if o["name"] == "labels":
            k = params.get("top_k", DEFAULT_TOP_K)
            if not _is_int(k) or k < 1:
                raise HTTPError(400, f"labels top_k must be a positive integer, got {k!r}")
            top_k = k
    return inp, outputs, top_k


def _tensor(inp: dict, gen: Generation) -> np.ndarray:
    s = gen.first.size
    shape = inp["shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(d) for d in shape)
            and shape[1:] == [s, s, 3] and 1 <= shape[0] <= 64):
        raise HTTPError(400, f"input shape {shape} does not match the model: send [N, {s}, {s}, 3] "
                             "(N from 1 to 64), RGB uint8, already resized")
    data = inp["data"]
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):   # ragged, huge, deeply nested
        raise HTTPError(400, "UINT8 data must be integers 0..255") from None
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        # floats (0.7 is not a pixel level), booleans, strings and too-large integers (object)
        raise HTTPError(400, "UINT8 data must be integers 0..255")
    if arr.size != int(np.prod(shape)):
        raise HTTPError(400, f"data has {arr.size} values, shape {shape} needs {int(np.prod(shape))}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise HTTPError(400, "UINT8 data must be integers 0..255")
    return arr.reshape(shape).astype(np.uint8)


def _prepare_tensor(frame: np.ndarray):
    def run(clf):
        t = time.perf_counter()
        x = clf.preprocess(frame, workers=1)   # already model-sized: no resampling, only the input's quantization
        return x, {"decode": 0.0, "resize": (time.perf_counter() - t) * 1e3}
    return run


def _decode_bytes(inp: dict) -> list[bytes]:
    data = inp["data"]
    if not isinstance(data, list) or not data or len(data) > 64:
        raise HTTPError(400, "BYTES data must be a list of 1 to 64 base64-encoded image files")
    shape = inp["shape"]
    if not (isinstance(shape, list) and shape in ([len(data)], [len(data), 1])):
        raise HTTPError(400, f"BYTES input shape {shape} does not match its {len(data)} element(s): use [{len(data)}]")
    out = []
    for k, d in enumerate(data):
        if not isinstance(d, str):
            raise HTTPError(400, f"inputs[0].data[{k}]: expected a base64 string")
        try:
            out.append(base64.b64decode(d, validate=True))
        except (binascii.Error, ValueError):
            raise HTTPError(400, f"inputs[0].data[{k}]: not valid base64") from None
    return out
