"""`edge-serve DEPLOY`: the deploy folder as a local HTTP service (extra ``edgetl[serve]``)."""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile

import click

from ..clikit import friendly, run_main, verbose_option
from ..cores import usable_cores
from ..errors import UserError
from ..settings import options_from
from .config import ENV_KEY, ServeConfig

_ENV_CONFIG = "EDGE_SERVE_CONFIG"   # how worker processes get the settings (uvicorn imports the app)


def _check_tls(certfile: str, keyfile: str) -> None:
    """Load the certificate and key once before binding, so a wrong file is one line naming both."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise UserError(f"{keyfile} / {certfile}: not a usable TLS key and certificate pair "
                        f"({getattr(e, 'strerror', None) or e}); give the PEM files of one certificate") from None


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_grpc() -> None:
    """--grpc-port needs the serve-grpc extra (grpcio and a protobuf runtime as new as the messages)."""
    try:
        from . import grpc_service  # noqa: F401
    except ImportError as e:
        raise UserError(f'--grpc-port needs the serve-grpc extra ({e.name} is missing): '
                        f'pip install "edgetl[serve-grpc]"') from None
    except Exception as e:  # noqa: BLE001 - protobuf's VersionError: a runtime older than the messages
        raise UserError(f'--grpc-port: {e}; pip install "edgetl[serve-grpc]" brings a protobuf that fits') from None


def app_from_env():
    """uvicorn factory for worker processes."""
    from .app import create_app
    return create_app(ServeConfig(**json.loads(os.environ[_ENV_CONFIG])))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("deploy", type=click.Path())
@options_from(ServeConfig)
@verbose_option
@friendly
def serve(deploy, **options):
    """Serve a deploy folder over HTTP: POST /v1/classify (raw image/* body or multipart `file`),
    the Open Inference Protocol (KServe v2) REST endpoints under /v2, Prometheus /metrics, OpenAPI
    docs at /docs, and POST /v2/repository/models/NAME/load (or SIGHUP) to swap in a re-converted
    model without dropping requests.

    \b
      edge-serve runs/flowers/deploy
      curl -s --data-binary @daisy.jpg -H 'Content-Type: image/jpeg' localhost:8080/v1/classify
    """
    cfg = ServeConfig(deploy=str(deploy), **{**options, "api_key": options["api_key"] or None})
    try:
        import uvicorn

        from .pool import core_plan, load_generation
    except ImportError as e:
        raise UserError(f'edge-serve needs the serve extra ({e.name} is missing): pip install "edgetl[serve]"') from None
    if cfg.grpc_port is not None:
        _check_grpc()
    if cfg.camera is not None and cfg.workers > 1:
        raise UserError("--camera is read by one process: use it with --workers 1")
    load_generation(deploy, 1, 0, cfg.precision)   # a bad folder fails here, before binding a port
    if bool(cfg.ssl_keyfile) != bool(cfg.ssl_certfile):
        raise UserError("--ssl-keyfile and --ssl-certfile go together")
    if cfg.ssl_certfile:
        _check_tls(cfg.ssl_certfile, cfg.ssl_keyfile)
    cfg.threads = cfg.threads or max(1, len(usable_cores()) // cfg.workers)
    host, port, workers, threads, queue, timeout = cfg.host, cfg.port, cfg.workers, cfg.threads, cfg.queue, cfg.timeout
    pin = cfg.pin
    if not _is_loopback(host) and not cfg.api_key:
        click.echo(f"warning: serving on {host} without an API key: anyone who can reach this port can use "
                   f"the model; set --api-key or {ENV_KEY}", err=True)
    scheme = "https" if cfg.ssl_certfile else "http"
    plan = core_plan(threads, pin)   # each process pins its own threads alike
    pinned = f" pinned to cores {','.join(map(str, plan))}" if plan else ""
    grpc = f" and grpc://{host}:{cfg.grpc_port}" if cfg.grpc_port is not None else ""
    grpc += f", camera {cfg.camera} on the page at /" if cfg.camera is not None else ""
    click.echo(f"edge-serve: {cfg.model_name()} from {deploy} on {scheme}://{host}:{port}{grpc} "
               f"({workers} process(es) x {threads} thread(s){pinned}, queue {queue}, timeout {timeout:g}s)", err=True)
    common = dict(host=host, port=port, log_level="warning", access_log=cfg.access_log,
                  ssl_keyfile=cfg.ssl_keyfile, ssl_certfile=cfg.ssl_certfile, timeout_graceful_shutdown=int(timeout) + 1)
    if workers == 1:
        from .app import create_app
        uvicorn.run(create_app(cfg), **common)
        return
    sync = tempfile.mkdtemp(prefix="edge-serve-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", sync)
    cfg.sync_dir = sync
    os.environ[_ENV_CONFIG] = json.dumps(cfg.__dict__)
    uvicorn.run("edge_runtime.serve.cli:app_from_env", factory=True, workers=workers, **common)


def main():
    # LiteRT's delegate banner is not edge-serve's first line (--verbose / EDGETL_VERBOSE=1 shows it)
    run_main(serve)


if __name__ == "__main__":
    main()
