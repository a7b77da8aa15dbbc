"""`edge-serve DEPLOY`: the deploy folder as a local HTTP service (extra ``edgetl[serve]``)."""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import tempfile

import click

from ..cores import usable_cores
from ..errors import UserError

ENV_KEY = "EDGE_SERVE_API_KEY"
_ENV_CONFIG = "EDGE_SERVE_CONFIG"   # how worker processes get the settings (uvicorn imports the app)


MIN_BODY = 1024


def parse_size(text: str) -> int:
    """'10MB', '512KB', '1.5MiB', '2000000' -> bytes."""
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


def _check_tls(certfile: str, keyfile: str) -> None:
    """Load the certificate and key once before binding, so a wrong file is one line naming both."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError, ValueError) as e:
        click.echo(f"error: {keyfile} / {certfile}: not a usable TLS key and certificate pair "
                   f"({getattr(e, 'strerror', None) or e}); give the PEM files of one certificate", err=True)
        sys.exit(2)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_from_env():
    """uvicorn factory for worker processes."""
    from .app import ServeConfig, create_app
    return create_app(ServeConfig(**json.loads(os.environ[_ENV_CONFIG])))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("deploy", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback should have an --api-key.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes (each loads the model; a swap reaches all of them).")
@click.option("--threads", default=None, type=click.IntRange(1, 64),
              help="Inference threads per process, one interpreter each [default: cores / workers].")
@click.option("--max-body", default="10MB", show_default=True, help="Largest request body; larger -> 413.")
@click.option("--queue", default=8, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests that may wait beyond the running ones; more -> 503 with Retry-After.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.01, 3600),
              help="Seconds from arrival to answer; later -> 504.")
@click.option("--api-key", envvar=ENV_KEY, show_envvar=True,
              help="Require `Authorization: Bearer KEY` (or X-API-Key) on every endpoint but /v2/health.")
@click.option("--name", help="Model name in the v2 API [default: the run folder's name].")
@click.option("--precision", help="Artifact to serve [default: the manifest's].")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False))
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False))
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Pin each inference thread to its own core when the threads fill the cores "
                   "(lower tail latency); --no-pin when other programs share the cores.")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs time under load).")
def main(deploy, host, port, workers, threads, max_body, queue, timeout, api_key, name, precision,
         ssl_keyfile, ssl_certfile, pin, access_log):
    """Serve a deploy folder over HTTP: POST /v1/classify (raw image/* body or multipart `file`),
    the Open Inference Protocol (KServe v2) REST endpoints under /v2, Prometheus /metrics, OpenAPI
    docs at /docs, and POST /v2/repository/models/NAME/load (or SIGHUP) to swap in a re-converted
    model without dropping requests.

    \b
      edge-serve runs/flowers/deploy
      curl -s --data-binary @daisy.jpg -H 'Content-Type: image/jpeg' localhost:8080/v1/classify
    """
    try:
        max_body = parse_size(max_body)
    except click.BadParameter as e:
        click.echo(f"error: --max-body {e.message}", err=True)
        sys.exit(2)
    try:
        import uvicorn

        from .app import ServeConfig
        from .pool import core_plan, load_generation
    except ImportError as e:
        click.echo(f'error: edge-serve needs the serve extra ({e.name} is missing): pip install "edgetl[serve]"',
                   err=True)
        sys.exit(2)
    try:
        load_generation(deploy, 1, 0, precision)   # a bad folder fails here, before binding a port
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    if bool(ssl_keyfile) != bool(ssl_certfile):
        click.echo("error: --ssl-keyfile and --ssl-certfile go together", err=True)
        sys.exit(2)
    if ssl_certfile:
        _check_tls(ssl_certfile, ssl_keyfile)
    threads = threads or max(1, len(usable_cores()) // workers)
    cfg = ServeConfig(deploy=str(deploy), name=name, threads=threads, queue=queue, max_body=max_body,
                      timeout=timeout, api_key=api_key or None, precision=precision, pin=pin)
    if not _is_loopback(host) and not cfg.api_key:
        click.echo(f"warning: serving on {host} without an API key: anyone who can reach this port can use "
                   f"the model; set --api-key or {ENV_KEY}", err=True)
    scheme = "https" if ssl_certfile else "http"
    plan = core_plan(threads, pin)   # each process pins its own threads alike
    pinned = f" pinned to cores {','.join(map(str, plan))}" if plan else ""
    click.echo(f"edge-serve: {cfg.model_name()} from {deploy} on {scheme}://{host}:{port} "
               f"({workers} process(es) x {threads} thread(s){pinned}, queue {queue}, timeout {timeout:g}s)", err=True)
    common = dict(host=host, port=port, log_level="warning", access_log=access_log,
                  ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, timeout_graceful_shutdown=int(timeout) + 1)
    if workers == 1:
        from .app import create_app
        uvicorn.run(create_app(cfg), **common)
        return
    sync = tempfile.mkdtemp(prefix="edge-serve-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", sync)
    cfg.sync_dir = sync
    os.environ[_ENV_CONFIG] = json.dumps(cfg.__dict__)
    uvicorn.run("edge_runtime.serve.cli:app_from_env", factory=True, workers=workers, **common)


if __name__ == "__main__":
    main()
