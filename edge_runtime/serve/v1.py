"""edgetl's own endpoint: POST /v1/classify, one image in, the top-k out (as edge-predict)."""
from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..classifier import DEFAULT_TOP_K, Classifier
from ..errors import UserError
from .http import HTTPError, multipart_file, query_number


def router(state) -> APIRouter:
    """``state``: the app's ServeState."""
    router = APIRouter()

    @router.post("/v1/classify", summary="Classify one image (raw image/* body or multipart field `file`)")
    async def classify(request: Request):
        """Query: top_k (default 3, as edge-predict), threshold (0..1, default 0). Read by hand rather than as typed
        parameters: FastAPI's parameter validation is a visible share of a small model's request."""
        t0 = time.perf_counter()
        top_k = query_number(request, "top_k", DEFAULT_TOP_K, int)
        threshold = query_number(request, "threshold", 0.0, float)
        try:
            Classifier.check_top_k_threshold(top_k, threshold)
        except UserError as e:
            raise HTTPError(400, str(e)) from None
        try:
            body = await state.read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        ctype = (request.headers.get("content-type") or "").lower()
        if ctype.startswith("multipart/form-data"):
            data, label = multipart_file(body, request.headers.get("content-type"))
        elif ctype.startswith("image/") or ctype in ("", "application/octet-stream"):
            data, label = body, "<body>"
        else:
            raise HTTPError(415, f"Content-Type {ctype!r}: send the image bytes as image/* or a multipart field `file`")
        deadline = time.monotonic() + state.cfg.timeout
        gen, scores, timings = await state.infer([state.prepare_encoded(data, label)], deadline)
        scores, timings = scores[0], timings[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        labels = gen.first.labels
        top = [{"label": labels[i], "score": round(float(scores[i]), 6)} for i in order
               if float(scores[i]) >= threshold]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return JSONResponse({"model": {"name": state.name, "sha256": gen.sha256, "precision": gen.precision,
                                       "version": str(gen.number)},
                             "top_k": top, "latency_ms": {k: round(v, 3) for k, v in timings.items()}})

    return router
