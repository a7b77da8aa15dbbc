"""What every route of edge-serve shares: the settings, the model pool, the metrics, and the
request path they all take (read the body within --max-body, admit into the queue, run on an
inference thread within --timeout), plus the hot swap (load endpoint, SIGHUP, other workers)."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from ..image import ImageError, open_image
from .config import ServeConfig
from .http import HTTPError, image_status
from .pool import Generation, InferencePool, Overloaded


class ServeState:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.name = cfg.model_name()
        self._pool: InferencePool | None = None
        self.metrics = None
        self._watcher = None
        self._grpc = None
        self.camera = None   # serve.live.LiveCamera with --camera

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        from .metrics import Metrics

        # The event loop shares the GIL with the inference threads; a 1 ms switch interval (Python's
        # default is 5 ms) keeps it from waiting on them, which shows in tail latency under load.
        sys.setswitchinterval(0.001)
        cfg = self.cfg
        self._pool = await run_in_threadpool(InferencePool, Path(cfg.deploy), cfg.threads, cfg.queue, cfg.precision,
                                             cfg.pin)
        # Everything loaded so far (the web stack, numpy, the interpreters) lives as long as the
        # process: moved out of the collector's view, a full collection under load scans only
        # what requests allocated. A full collection of the loaded process took 8-19 ms here,
        # long enough to stall every request in flight and show at the p99.
        gc.collect()
        gc.freeze()
        self.metrics = Metrics(self.name)
        self.metrics.model(self._pool.current)
        loop = asyncio.get_running_loop()
        try:   # kill -HUP <pid> swaps the model like the load endpoint
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_logged()))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        self._watcher = asyncio.ensure_future(self._watch_swaps()) if cfg.sync_dir else None
        if cfg.camera is not None:
            from .live import LiveCamera
            self.camera = LiveCamera(cfg.camera, self)
            await self.camera.start()
        if cfg.grpc_port is not None:   # the same pool, queue, key and metrics over gRPC
            from . import grpc_service
            self._grpc = await grpc_service.start(self, cfg.host, cfg.grpc_port)

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        if self.camera is not None:
            self.camera.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.cfg.timeout)   # requests in flight finish, as on HTTP
        if self._pool is not None:
            self._pool.close()

    @property
    def ready(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> InferencePool:
        return self._pool

    # ------------------------------------------------------------------ the request path
    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed --max-body."""
        limit = self.cfg.max_body
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"body of {int(declared):,} bytes is over the --max-body limit of {limit:,}")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise HTTPError(413, f"body is over the --max-body limit of {limit:,} bytes")
        return bytes(buf)

    async def infer(self, prepares: list, deadline: float):
        """One admission for one request (a v2 batch included): each image is decoded, resized and
        run on an inference thread (beside the other threads' work), all within one deadline.
        ``prepare(generation) -> (x, timings)``. Returns (generation, [scores], [timings])."""
        p = self.pool
        try:
            p.admit()
        except Overloaded:
            raise HTTPError(503, f"overloaded: {self.cfg.threads} running and {self.cfg.queue} waiting; retry shortly",
                            {"Retry-After": "1"}) from None
        self.metrics.depth(p.queue_depth)
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
            raise HTTPError(504, f"no answer within --timeout {self.cfg.timeout:g} s") from None
        finally:
            p.release()
            self.metrics.depth(p.queue_depth)

    @staticmethod
    def prepare_encoded(data: bytes, label: str):
        """An encoded image's work for an inference thread: decode, resize (edge-predict's own)."""
        def run(clf):
            t = time.perf_counter()
            try:
                img = open_image(data, draft_size=clf.size if clf.draft else None, name=label)
            except ImageError as e:
                raise HTTPError(image_status(e), str(e)) from None
            t1 = time.perf_counter()
            x = clf.preprocess(img, workers=1)   # the other threads are busy with other requests
            return x, {"decode": (t1 - t) * 1e3, "resize": (time.perf_counter() - t1) * 1e3}
        return run

    def check_model(self, model: str, version: str | None = None) -> Generation:
        if model != self.name:
            raise HTTPError(404, f"unknown model {model!r}; this server has {self.name!r}")
        gen = self.pool.current
        if version is not None and version != str(gen.number):
            raise HTTPError(404, f"model {model!r} has no version {version!r}; loaded: {gen.number}")
        return gen

    # ------------------------------------------------------------------ hot swap
    async def reload(self, announce: bool = True):
        old = self.pool.current
        try:
            old, new = await run_in_threadpool(self.pool.reload)
        except UserError as e:
            self.metrics.swap(False)
            raise HTTPError(400, f"new model refused, still serving sha256 {old.sha256[:12]}: {e}") from None
        self.metrics.swap(True)
        self.metrics.model(new)
        if announce:
            self._announce(new)
        return old, new

    async def reload_logged(self):
        try:
            old, new = await self.reload()
            print(f"edge-serve: swapped {old.sha256[:12]} -> {new.sha256[:12]}", file=sys.stderr, flush=True)
        except HTTPError as e:
            print(f"edge-serve: {e.message}", file=sys.stderr, flush=True)

    def _announce(self, gen: Generation):
        if self.cfg.sync_dir:
            from ..atomic import write_json
            write_json(Path(self.cfg.sync_dir) / "model.json", {"sha256": gen.sha256, "at": time.time(),
                                                                "pid": os.getpid()})

    async def _watch_swaps(self):
        """Several processes: a swap accepted by one is repeated by the others (same checks)."""
        f = Path(self.cfg.sync_dir) / "model.json"
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
            if note.get("pid") != os.getpid() and note.get("sha256") != self.pool.current.sha256:
                try:
                    await self.reload(announce=False)
                except HTTPError:
                    pass
