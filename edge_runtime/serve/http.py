"""HTTP plumbing shared by edge-serve's routers: the error every handler raises (answered as a JSON
body with its status), the API-key and metrics middleware, and small request helpers."""
from __future__ import annotations

import hmac
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.cookies import CookieError, SimpleCookie

from fastapi.responses import JSONResponse

from ..image import ImageError


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def image_status(e: ImageError) -> int:
    return 415 if e.kind == "not_an_image" else 400


class Guard:
    """API key check and request metrics as plain ASGI middleware (Starlette's
    BaseHTTPMiddleware would cost a task and a body stream copy per request)."""

    OPEN = ("/v2/health/", "/docs", "/openapi.json")

    def __init__(self, app, api_key: str | None, state):
        self.app, self.api_key, self.state = app, api_key, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        path = scope["path"]
        status = [500]
        if self.api_key and path == "/" and not key_ok(scope, self.api_key):
            # a browser cannot send a header when it opens a page: the key comes once as ?key=,
            # becomes a cookie (sent with the page's own requests and its streams), and leaves the address
            status[0] = await page_login(scope, self.api_key, receive, send)
        elif self.api_key and not path.startswith(self.OPEN) and not key_ok(scope, self.api_key):
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
        if self.state.metrics is not None:
            self.state.metrics.observe(route_label(path), status[0], time.perf_counter() - t)


def query_number(request, name: str, default, kind):
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


COOKIE = "edge_serve_key"


def key_ok(scope, key: str) -> bool:
    """The API key from `X-API-Key`, `Authorization: Bearer`, or the live page's cookie."""
    given = ""
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            given = value.decode("latin-1")
        elif name == b"authorization" and value[:7].lower() == b"bearer " and not given:
            given = value[7:].decode("latin-1").strip()
        elif name == b"cookie" and not given:
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            if COOKIE in jar:
                given = jar[COOKIE].value
    return hmac.compare_digest(given.encode(), key.encode())


async def page_login(scope, key: str, receive, send) -> int:
    """The page without a valid key: ``/?key=KEY`` sets the cookie and reloads the page (303);
    anything else gets a form asking for the key (401). Returns the status sent."""
    from urllib.parse import parse_qs

    from fastapi.responses import RedirectResponse

    from .live import key_page

    given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key", [None])[0]
    if given is not None and hmac.compare_digest(given.encode(), key.encode()):
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        await response(scope, receive, send)
        return 303
    await key_page("wrong API key" if given is not None else None)(scope, receive, send)
    return 401


def route_label(path: str) -> str:
    """A bounded label set for metrics (paths carry model names)."""
    for prefix, label in (("/v1/classify", "classify"), ("/v2/repository", "repository"), ("/v2/health", "health"),
                          ("/metrics", "metrics")):
        if path.startswith(prefix):
            return label
    if path.startswith("/v2/models/"):
        return "infer" if path.endswith("/infer") else "model"
    return "other"


def multipart_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The `file` field of a multipart/form-data body (standard library parser)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise HTTPError(400, "multipart body could not be parsed (boundary missing or wrong)")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True) or b"", part.get_filename() or "<file>"
    raise HTTPError(400, "multipart body has no field named `file`")
