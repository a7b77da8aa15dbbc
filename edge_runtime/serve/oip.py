"""The Open Inference Protocol (KServe v2) over HTTP: server and model metadata, health, and infer
on UINT8 (or, for a float-input model, FP32) pixel tensors or BYTES encoded images, as JSON or as
the protocol's binary tensor data (serve.oip_codec reads and writes both)."""
from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .. import edgetl_version
from .oip_codec import HEADER_LENGTH, InferRequest, ModelInput, encode_response, parse_request
from .pool import Generation


def router(state) -> APIRouter:
    """``state``: the app's ServeState."""
    router = APIRouter()

    @router.get("/v2", summary="Server metadata")
    async def server_meta():
        return server_metadata()

    @router.get("/v2/health/live")
    async def live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready():
        ok = state.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/v2/models/{model}")
    async def model_meta(model: str):
        return metadata(state.name, state.check_model(model))

    @router.get("/v2/models/{model}/versions/{version}")
    async def model_meta_version(model: str, version: str):
        return metadata(state.name, state.check_model(model, version))

    @router.get("/v2/models/{model}/ready")
    async def model_ready(model: str):
        state.check_model(model)
        return {"name": state.name, "ready": True}

    # The infer routes read their path by hand (as /v1/classify reads its query): FastAPI's
    # parameter validation is a visible share of a small model's request.
    @router.post("/v2/models/{model}/infer", summary="Infer (JSON or binary tensor data)")
    async def model_infer(request: Request):
        return await _infer_v2(request)

    @router.post("/v2/models/{model}/versions/{version}/infer", summary="Infer on a model version")
    async def model_infer_version(request: Request):
        return await _infer_v2(request)

    async def _infer_v2(request: Request):
        gen = state.check_model(request.path_params["model"], request.path_params.get("version"))
        try:
            body = await state.read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        req = parse_request(body, request.headers.get(HEADER_LENGTH), model_input(gen))
        used, scores = await infer(state, req)
        content, header = encode_response(req, scores, used.first.labels, answer_meta(state.name, used))
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})

    return router


def model_input(gen: Generation) -> ModelInput:
    return ModelInput(size=gen.first.size, takes_float=gen.first.input_dtype == np.float32)


def answer_meta(name: str, used: Generation) -> dict:
    return {"model_name": name, "model_version": str(used.number), "parameters": {"sha256": used.sha256}}


async def infer(state, req: InferRequest) -> tuple[Generation, np.ndarray]:
    """(the model generation that answered, its scores (N, classes)) for a checked request."""
    deadline = time.monotonic() + state.cfg.timeout
    if req.pixels is None:
        prepares = [state.prepare_encoded(d, f"inputs[0] element {k}") for k, d in enumerate(req.encoded)]
    else:
        prepares = [_prepare_tensor(req.pixels[k]) for k in range(req.batch)]
    used, all_scores, _ = await state.infer(prepares, deadline)
    return used, np.stack(all_scores).astype(np.float32)


def server_metadata() -> dict:
    return {"name": "edge-serve", "version": edgetl_version(), "extensions": ["model_repository", "binary_tensor_data"]}


def metadata(name: str, gen: Generation) -> dict:
    """The model's metadata (HTTP and gRPC alike)."""
    clf = gen.first
    s = clf.size
    return {
        "name": name, "versions": [str(gen.number)], "platform": "tflite",
        "inputs": [{"name": "image", "datatype": "FP32" if clf.input_dtype == np.float32 else "UINT8",
                    "shape": [-1, s, s, 3]},
                   {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, len(clf.labels)]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}],
        "parameters": {"labels": clf.labels, "sha256": gen.sha256, "precision": gen.precision,
                       "resize": clf.resize_method,
                       "input_note": "image: RGB pixels 0..255, HWC at the model size, batch first (UINT8; "
                                     "FP32 too where the model's input is float); image_bytes: JPEG/PNG "
                                     "files (any size, resized like edge-predict), base64 in JSON or as "
                                     "binary tensor data"},
    }


def _prepare_tensor(frame: np.ndarray):
    def run(clf):
        t = time.perf_counter()
        # already model-sized: no resampling. Float pixels reach a float-input model as they are
        # (a model swapped in meanwhile that takes uint8 gets them rounded); uint8 ones get the
        # input's quantization
        if frame.dtype == np.float32 and clf.input_dtype == np.float32:
            x = frame[None]
        else:
            x = clf.preprocess(np.clip(np.round(frame), 0, 255).astype(np.uint8), workers=1)
        return x, {"decode": 0.0, "resize": (time.perf_counter() - t) * 1e3}
    return run


