"""edge-serve's settings: the one source of its command-line options and of the app's defaults.
Kept apart from the app so `edge-serve --help` works without the serve extra installed."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..settings import Range, check_ranges, opt

ENV_KEY = "EDGE_SERVE_API_KEY"
MIN_BODY = 1024


def parse_size(text) -> int:
    """'10MB', '512KB', '1.5MiB', '2000000' (or an int) -> bytes, at least MIN_BODY."""
    t = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3,
             "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "B": 1}
    unit = next((u for u in units if t.endswith(u)), None)
    num, mult = (t[: -len(unit)], units[unit]) if unit else (t, 1)
    try:
        value = float(num)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a size like 10MB, 512KB or 2000000") from None
    size = value * mult
    if not size >= MIN_BODY:   # also NaN
        raise click.BadParameter(f"{text!r}: must be at least 1KB (a request holding one small image needs more)")
    return int(size)


@dataclass
class ServeConfig:
    deploy: str = field(default="", metadata={"cli": False})
    host: str = opt("127.0.0.1", "Address to bind; anything but loopback should have an --api-key.")
    port: int = opt(8080, "TCP port.", range=Range(0, 65535))
    grpc_port: int | None = opt(None, "Also answer the Open Inference Protocol over gRPC on this port "
                                      "(inference.GRPCInferenceService; pip install \"edgetl[serve-grpc]\").",
                                range=Range(0, 65535))
    camera: str | None = opt(None, "Show this camera's feed, classified live, on the page at / : an OpenCV index, "
                                   "picamera, or a network camera's URL (as edge-predict --camera).")
    workers: int = opt(1, "Processes (each loads the model; a swap reaches all of them).", range=Range(1, 64))
    threads: int | None = opt(None, "Inference threads per process, one interpreter each [default: cores / workers].",
                              range=Range(1, 64))
    max_body: int = opt(10 * 1024 * 1024, "Largest request body in bytes (or 10MB, 512KB, 1.5MiB); larger -> 413.",
                        click={"type": str, "callback": lambda ctx, p, v: parse_size(v)})
    queue: int = opt(8, "Requests that may wait beyond the running ones; more -> 503 with Retry-After.",
                     range=Range(0, 10_000))
    timeout: float = opt(10.0, "Seconds from arrival to answer; later -> 504.", range=Range(0.01, 3600))
    api_key: str | None = opt(None, "Require `Authorization: Bearer KEY` (or X-API-Key) on every endpoint but "
                                    "/v2/health.", click={"envvar": ENV_KEY, "show_envvar": True})
    name: str | None = opt(None, "Model name in the v2 API [default: the run folder's name].")
    precision: str | None = opt(None, "Artifact to serve [default: the manifest's].")
    ssl_keyfile: str | None = opt(None, "TLS private key (PEM); with --ssl-certfile.")
    ssl_certfile: str | None = opt(None, "TLS certificate (PEM); with --ssl-keyfile.")
    pin: bool = opt(True, "Pin each inference thread to its own core when the threads fill the cores "
                          "(lower tail latency); --no-pin when other programs share the cores.", flag="--pin/--no-pin")
    access_log: bool = opt(False, "Log every request (off by default: it costs time under load).",
                           flag="--access-log")
    sync_dir: str | None = field(default=None, metadata={"cli": False})   # where a swap is announced to workers

    def __post_init__(self):
        check_ranges(self)

    def model_name(self) -> str:
        if self.name:
            return self.name
        p = Path(self.deploy).resolve()
        return p.parent.name if p.name == "deploy" else p.name
