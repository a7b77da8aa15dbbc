"""The HTTP service (FastAPI): edgetl's own `/v1/classify`, the Open Inference Protocol (KServe
v2) REST subset, Prometheus `/metrics`, and a hot model swap.

Every error is a JSON body ``{"error": "..."}`` with the status that names the problem: 400 bad
request, 401 missing/wrong API key, 404 unknown model, 413 body over --max-body, 415 not an image,
503 overloaded (with Retry-After), 504 past --timeout. The decode and resize are edge-predict's
own (edge_runtime.image), with the manifest's rules (JPEG draft decoding only where the converter
verified it costs no accuracy).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hmac
import json
import os
import signal
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .. import edgetl_version
from ..classifier import DEFAULT_TOP_K, Classifier
from ..errors import UserError
from ..image import ImageError, open_image
from .config import ServeConfig
from .pool import Generation, InferencePool, Overloaded

API_VERSION = "2"


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _image_status(e: ImageError) -> int:
    return 415 if e.kind == "not_an_image" else 400


def create_app(cfg: ServeConfig):
    from .metrics import Metrics

    name = cfg.model_name()
    state: dict = {}

    async def lifespan(app):
        import sys
        # The event loop shares the GIL with the inference threads; a 1 ms switch interval (Python's
        # default is 5 ms) keeps it from waiting on them, which shows in tail latency under load.
        sys.setswitchinterval(0.001)
        pool = await run_in_threadpool(InferencePool, Path(cfg.deploy), cfg.threads, cfg.queue, cfg.precision,
                                      cfg.pin)
        state["pool"] = pool
        # Everything loaded so far (the web stack, numpy, the interpreters) lives as long as the
        # process: moved out of the collector's view, a full collection under load scans only
        # what requests allocated. A full collection of the loaded process took 8-19 ms here,
        # long enough to stall every request in flight and show at the p99.
        gc.collect()
        gc.freeze()
        state["metrics"] = Metrics(name)
        state["metrics"].model(pool.current)
        loop = asyncio.get_running_loop()
        try:   # kill -HUP <pid> swaps the model like the load endpoint
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload_logged()))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        watcher = asyncio.ensure_future(_watch_swaps()) if cfg.sync_dir else None
        yield
        if watcher:
            watcher.cancel()
        pool.close()

    app = FastAPI(title="edge-serve", version=API_VERSION, lifespan=lifespan,
                  description="edgetl deploy folder as a REST service: /v1/classify and the Open Inference "
                              "Protocol (KServe v2) REST subset.")

    def pool() -> InferencePool:
        return state["pool"]

    def err(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_middleware(_Guard, api_key=cfg.api_key, state=state)

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, e: HTTPError):
        return err(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "query")
        return err(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(404)
    async def not_found(request: Request, e):
        return err(404, f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def bad_method(request: Request, e):
        return err(405, f"{request.method} is not allowed on {request.url.path}")

    # ------------------------------------------------------------------ shared request path
    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed --max-body."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body:
            raise HTTPError(413, f"body of {int(declared):,} bytes is over the --max-body limit of {cfg.max_body:,}")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > cfg.max_body:
                raise HTTPError(413, f"body is over the --max-body limit of {cfg.max_body:,} bytes")
        return bytes(buf)

    async def infer(prepares: list, deadline: float):
        """One admission for one request (a v2 batch included): each image is decoded, resized and
        run on an inference thread (beside the other threads' work), all within one deadline.
        ``prepare(generation) -> (x, timings)``. Returns (generation, [scores], [timings])."""
        p = pool()
        try:
            p.admit()
        except Overloaded:
            raise HTTPError(503, f"overloaded: {cfg.threads} running and {cfg.queue} waiting; retry shortly",
                            {"Retry-After": "1"}) from None
        state["metrics"].depth(p.queue_depth)
        futs = []
        try:
            gen = p.current   # the whole request runs on one model, even across a swap
            futs = [p.submit(f, gen) for f in prepares]
            done = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futs)),
                                          max(deadline - time.monotonic(), 0.001))
            return gen, [scores for scores, _ in done], [t for _, t in done]
        except asyncio.TimeoutError:
            for f in futs:
                f.cancel()
            raise HTTPError(504, f"no answer within --timeout {cfg.timeout:g} s") from None
        finally:
            p.release()
            state["metrics"].depth(p.queue_depth)

    def prepare_encoded(data: bytes, label: str):
        def run(clf):
            t = time.perf_counter()
            try:
                img = open_image(data, draft_size=clf.size if clf.draft else None, name=label)
            except ImageError as e:
                raise HTTPError(_image_status(e), str(e)) from None
            t1 = time.perf_counter()
            x = clf.preprocess(img, workers=1)   # the other threads are busy with other requests
            return x, {"decode": (t1 - t) * 1e3, "resize": (time.perf_counter() - t1) * 1e3}
        return run

    # ------------------------------------------------------------------ /v1/classify
    @app.post("/v1/classify", summary="Classify one image (raw image/* body or multipart field `file`)")
    async def classify(request: Request):
        """Query: top_k (default 3, as edge-predict), threshold (0..1, default 0). Read by hand rather than as typed
        parameters: FastAPI's parameter validation is a visible share of a small model's request."""
        t0 = time.perf_counter()
        top_k = _query_number(request, "top_k", DEFAULT_TOP_K, int)
        threshold = _query_number(request, "threshold", 0.0, float)
        try:
            Classifier.check_top_k_threshold(top_k, threshold)
        except UserError as e:
            raise HTTPError(400, str(e)) from None
        try:
            body = await read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        ctype = (request.headers.get("content-type") or "").lower()
        if ctype.startswith("multipart/form-data"):
            data, label = _multipart_file(body, request.headers.get("content-type"))
        elif ctype.startswith("image/") or ctype in ("", "application/octet-stream"):
            data, label = body, "<body>"
        else:
            raise HTTPError(415, f"Content-Type {ctype!r}: send the image bytes as image/* or a multipart field `file`")
        deadline = time.monotonic() + cfg.timeout
        gen, scores, timings = await infer([prepare_encoded(data, label)], deadline)
        scores, timings = scores[0], timings[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        labels = gen.first.labels
        top = [{"label": labels[i], "score": round(float(scores[i]), 6)} for i in order
               if float(scores[i]) >= threshold]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return JSONResponse({"model": {"name": name, "sha256": gen.sha256, "precision": gen.precision,
                                       "version": str(gen.number)},
                             "top_k": top, "latency_ms": {k: round(v, 3) for k, v in timings.items()}})

    # ------------------------------------------------------------------ Open Inference Protocol (v2)
    def check_model(model: str, version: str | None = None) -> Generation:
        if model != name:
            raise HTTPError(404, f"unknown model {model!r}; this server has {name!r}")
        gen = pool().current
        if version is not None and version != str(gen.number):
            raise HTTPError(404, f"model {model!r} has no version {version!r}; loaded: {gen.number}")
        return gen

    @app.get("/v2", summary="Server metadata")
    async def server_meta():
        return {"name": "edge-serve", "version": edgetl_version(), "extensions": ["model_repository"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        ok = "pool" in state
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}")
    async def model_meta(model: str):
        return _metadata(name, check_model(model))

    @app.get("/v2/models/{model}/versions/{version}")
    async def model_meta_version(model: str, version: str):
        return _metadata(name, check_model(model, version))

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str):
        check_model(model)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model}/infer")
    async def model_infer(model: str, request: Request):
        return await _infer_v2(model, None, request)

    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def model_infer_version(model: str, version: str, request: Request):
        return await _infer_v2(model, version, request)

    async def _infer_v2(model: str, version: str | None, request: Request):
        gen = check_model(model, version)
        try:
            body = await read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        req = _json_request(body)
        inp, outputs, top_k = _parse_infer(req, gen)
        deadline = time.monotonic() + cfg.timeout
        if inp["datatype"] == "BYTES":
            items = _decode_bytes(inp)
            prepares = [prepare_encoded(d, f"inputs[0].data[{k}]") for k, d in enumerate(items)]
        else:
            arr = _tensor(inp, gen)
            prepares = [_prepare_tensor(arr[k]) for k in range(arr.shape[0])]
        used, all_scores, _ = await infer(prepares, deadline)
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
        resp = {"model_name": name, "model_version": str(used.number), "outputs": out,
                "parameters": {"sha256": used.sha256}}
        if "id" in req:
            resp["id"] = req["id"]
        return JSONResponse(resp)

    # ------------------------------------------------------------------ model repository: hot swap
    def _announce(gen: Generation):
        if cfg.sync_dir:
            from ..atomic import write_json
            write_json(Path(cfg.sync_dir) / "model.json", {"sha256": gen.sha256, "at": time.time(), "pid": os.getpid()})

    async def _watch_swaps():
        """Several processes: a swap accepted by one is repeated by the others (same checks)."""
        f = Path(cfg.sync_dir) / "model.json"
        seen = None
        while True:
            await asyncio.sleep(0.5)
            try:
                note = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if note == seen:
                continue
            seen = note
            if note.get("pid") != os.getpid() and note.get("sha256") != pool().current.sha256:
                try:
                    await _reload(announce=False)
                except HTTPError:
                    pass

    async def _reload_logged():
        import sys
        try:
            old, new = await _reload()
            print(f"edge-serve: swapped {old.sha256[:12]} -> {new.sha256[:12]}", file=sys.stderr, flush=True)
        except HTTPError as e:
            print(f"edge-serve: {e.message}", file=sys.stderr, flush=True)

    async def _reload(announce: bool = True):
        old = pool().current
        try:
            old, new = await run_in_threadpool(pool().reload)
        except UserError as e:
            state["metrics"].swap(False)
            raise HTTPError(400, f"new model refused, still serving sha256 {old.sha256[:12]}: {e}") from None
        state["metrics"].swap(True)
        state["metrics"].model(new)
        if announce:
            _announce(new)
        return old, new

    @app.post("/v2/repository/models/{model}/load", summary="Re-read the deploy folder and swap the model")
    async def load(model: str):
        check_model(model)
        old, new = await _reload()
        return {"name": name, "loaded": True, "version": str(new.number), "sha256": new.sha256,
                "previous_sha256": old.sha256}

    @app.post("/v2/repository/index")
    async def repo_index():
        gen = pool().current
        return [{"name": name, "version": str(gen.number), "state": "READY"}]

    # ------------------------------------------------------------------ Prometheus
    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        body, ctype = state["metrics"].render()
        return Response(body, media_type=ctype)

    return app


class _Guard:
    """API key check and request metrics as plain ASGI middleware (Starlette's
    BaseHTTPMiddleware would cost a task and a body stream copy per request)."""

    OPEN = ("/v2/health/", "/docs", "/openapi.json")

    def __init__(self, app, api_key: str | None, state: dict):
        self.app, self.api_key, self.state = app, api_key, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        path = scope["path"]
        status = [500]
        if self.api_key and not path.startswith(self.OPEN) and not _key_ok(scope, self.api_key):
            status[0] = 401
            await JSONResponse({"error": "missing or wrong API key: send `Authorization: Bearer KEY` or "
                                         "`X-API-Key: KEY`"}, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        else:
            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)
            await self.app(scope, receive, send_status)
        if "metrics" in self.state:
            self.state["metrics"].observe(_route_label(path), status[0], time.perf_counter() - t)


def _query_number(request, name: str, default, kind):
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise HTTPError(400, f"{name}: expected {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if value != value:
        raise HTTPError(400, f"{name}: expected a number, got {raw!r}")
    return value


def _key_ok(scope, key: str) -> bool:
    given = ""
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            given = value.decode("latin-1")
        elif name == b"authorization" and value[:7].lower() == b"bearer " and not given:
            given = value[7:].decode("latin-1").strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _route_label(path: str) -> str:
    """A bounded label set for metrics (paths carry model names)."""
    for prefix, label in (("/v1/classify", "classify"), ("/v2/repository", "repository"), ("/v2/health", "health"),
                          ("/metrics", "metrics")):
        if path.startswith(prefix):
            return label
    if path.startswith("/v2/models/"):
        return "infer" if path.endswith("/infer") else "model"
    return "other"


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


def _multipart_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The `file` field of a multipart/form-data body (standard library parser)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise HTTPError(400, "multipart body could not be parsed (boundary missing or wrong)")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True) or b"", part.get_filename() or "<file>"
    raise HTTPError(400, "multipart body has no field named `file`")
