"""The HTTP service (FastAPI): edgetl's own `/v1/classify` (serve.v1), the Open Inference Protocol
(KServe v2) REST subset (serve.oip), the model repository's hot swap and Prometheus `/metrics`
(serve.repository), all over one ServeState (serve.state).

Every error is a JSON body ``{"error": "..."}`` with the status that names the problem: 400 bad
request, 401 missing/wrong API key, 404 unknown model, 413 body over --max-body, 415 not an image,
503 overloaded (with Retry-After), 504 past --timeout. The decode and resize are edge-predict's
own (edge_runtime.image), with the manifest's rules (JPEG draft decoding only where the converter
verified it costs no accuracy).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import live, oip, repository, v1
from .config import ServeConfig
from .http import Guard, HTTPError
from .state import ServeState

API_VERSION = "2"


def create_app(cfg: ServeConfig) -> FastAPI:
    state = ServeState(cfg)

    async def lifespan(app):
        await state.start()
        yield
        await state.stop()

    app = FastAPI(title="edge-serve", version=API_VERSION, lifespan=lifespan,
                  description="edgetl deploy folder as a REST service: /v1/classify and the Open Inference "
                              "Protocol (KServe v2) REST endpoints, with binary tensor data (and over gRPC "
                              "with --grpc-port).")
    app.state.serve = state
    app.add_middleware(Guard, api_key=cfg.api_key, state=state)
    _error_handlers(app)
    for module in (v1, oip, repository, live):
        app.include_router(module.router(state))
    return app


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own included, as a JSON body with its status."""
    @app.exception_handler(HTTPError)
    async def http_error(request: Request, e: HTTPError):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "query")
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(404)
    async def not_found(request: Request, e):
        return _error(404, f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def bad_method(request: Request, e):
        return _error(405, f"{request.method} is not allowed on {request.url.path}")
