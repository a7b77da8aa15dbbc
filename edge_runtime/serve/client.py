"""The client side of edge-serve, standard library only (any device can call a server)."""
from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import UserError


class ServerUnreachable(UserError):
    """No answer at all: the server is down or the URL is wrong (stop, do not try every file)."""


def check_server_url(url: str) -> None:
    """An http(s) URL with a host, or one line saying what to give (never a traceback or a hang on
    a scheme urllib would try, such as ftp://)."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port   # a bad port raises here
    except ValueError as e:
        raise ServerUnreachable(f"{url}: not a URL ({e}); give e.g. http://pi.local:8080") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerUnreachable(f"{url}: edge-serve answers http:// or https:// URLs with a host; "
                                "give e.g. http://pi.local:8080")


def classify_remote(url: str, image: str | Path, top_k: int = 5, api_key: str | None = None,
                    timeout: float = 60.0) -> tuple[list[tuple[str, float]], float, dict]:
    """POST one image file to URL/v1/classify. Returns (top-k (label, score), round-trip ms,
    the server's whole answer). A refused image raises UserError naming the file."""
    check_server_url(url)
    p = Path(image)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot be read ({e.strerror or e})") from None
    ctype = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    q = urllib.parse.urlencode({"top_k": top_k})
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/classify?{q}", data=data, method="POST",
                                 headers={"Content-Type": ctype if ctype.startswith("image/") else "application/octet-stream"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            msg = e.reason
        if e.code in (401, 404):
            raise ServerUnreachable(f"{url}: {e.code} {msg}") from None
        raise UserError(f"{p}: server answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnreachable(f"{url}: no answer ({reason}); is edge-serve running there?") from None
    ms = (time.perf_counter() - t) * 1e3
    return [(d["label"], float(d["score"])) for d in answer["top_k"]], ms, answer
