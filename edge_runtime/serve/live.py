"""The live page at `/`: drop or pick a photo and see the top-k, the model and the latency split;
with ``edge-serve DEPLOY --camera SRC`` also the camera's feed with its current classification.

The camera is read on a thread that keeps only the newest frame; a task classifies the newest
frame through the same pool, queue and back-pressure as requests (a frame that finds the queue
full is skipped, never queued). The page gets frames as an MJPEG stream (each client is sent the
newest frame when it is ready for one: a slow page drops frames) and the classifications as
server-sent events. The page is one packaged static file: no CDN, no build step.
"""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from importlib import resources

import numpy as np
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, StreamingResponse

from ..classifier import DEFAULT_TOP_K
from ..log import log
from .http import HTTPError

BOUNDARY = "edgeserveframe"


class LiveCamera:
    """The newest camera frame and the newest classification, for any number of page clients."""

    def __init__(self, source: str, state, give_up_s: float = 300.0):
        self.source, self.state, self.give_up_s = source, state, give_up_s
        self.frame: np.ndarray | None = None
        self.seq = 0                     # frames read so far
        self.result: dict | None = None  # the newest classification
        self.error: str | None = None
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._new_frame = threading.Event()
        self._changed: asyncio.Condition | None = None
        self._task = None
        self._stop = threading.Event()

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), name="edge-serve-camera", daemon=True).start()
        self._task = asyncio.ensure_future(self._classify_newest())

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    # -- the camera thread
    def _read(self, loop) -> None:
        from ..errors import UserError
        from ..stream import camera_frames

        try:
            for frame in camera_frames(self.source, give_up_s=self.give_up_s):
                if self._stop.is_set():
                    return
                self.frame, self.seq = frame, self.seq + 1
                self._new_frame.set()
                asyncio.run_coroutine_threadsafe(self._notify(), loop)
        except UserError as e:
            self.error = str(e)
            log(f"edge-serve: camera {self.source}: {e}")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- classification, through the pool like a request
    async def _classify_newest(self) -> None:
        done = 0
        while True:
            await asyncio.get_running_loop().run_in_executor(None, self._new_frame.wait, 1.0)
            if self.seq == done or self.frame is None:
                continue
            self._new_frame.clear()
            seq, frame = self.seq, self.frame
            t = time.perf_counter()
            try:
                used, scores, timings = await self.state.infer([_prepare_frame(frame)], time.monotonic() + self.state.cfg.timeout)
            except HTTPError:   # the queue is full or the deadline passed: this frame is skipped
                continue
            done = seq
            probs = scores[0]
            order = np.argsort(-probs, kind="stable")[:DEFAULT_TOP_K]
            labels = used.first.labels
            self.result = {"frame": seq, "top_k": [{"label": labels[i], "score": round(float(probs[i]), 6)} for i in order],
                           "latency_ms": {**{k: round(v, 2) for k, v in timings[0].items()},
                                          "total": round((time.perf_counter() - t) * 1e3, 2)},
                           "model": {"name": self.state.name, "precision": used.precision}}
            await self._notify()

    def jpeg(self) -> tuple[int, bytes]:
        """The newest frame as JPEG (encoded once per frame, whoever asks first)."""
        seq, frame = self.seq, self.frame
        if frame is not None and self._jpeg[0] != seq:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame)).save(buf, "JPEG", quality=80)
            self._jpeg = (seq, buf.getvalue())
        return self._jpeg

    async def changes(self, seen):
        """Wait until ``seen()`` is no longer current (a new frame or result)."""
        async with self._changed:
            await self._changed.wait_for(lambda: not seen() or self._stop.is_set())


def _prepare_frame(frame: np.ndarray):
    def run(clf):
        t = time.perf_counter()
        x = clf.preprocess(frame, workers=1)
        return x, {"decode": 0.0, "resize": (time.perf_counter() - t) * 1e3}
    return run


def router(state) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("edge_runtime.serve").joinpath("static/index.html").read_text("utf-8"))

    @router.get("/live/info", summary="What the live page shows: model, labels, camera")
    async def info():
        gen = state.pool.current
        cam = state.camera
        return {"model": state.name, "precision": gen.precision, "labels": gen.first.labels,
                "camera": None if cam is None else {"source": cam.source, "error": cam.error}}

    @router.get("/live/stream.mjpg", summary="The camera's newest frames (MJPEG)")
    async def stream():
        cam = _camera(state)

        async def frames():
            sent = 0
            while True:
                await cam.changes(lambda sent=sent: cam.seq == sent)
                sent, jpeg = cam.jpeg()
                if jpeg:
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                           .encode() + jpeg + b"\r\n")
        return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")

    @router.get("/live/events", summary="The camera's newest classification (server-sent events)")
    async def events():
        cam = _camera(state)

        async def results():
            sent = None
            while True:
                await cam.changes(lambda sent=sent: cam.result is sent)
                sent = cam.result
                if sent is not None:
                    yield f"data: {json.dumps(sent)}\n\n"
        return StreamingResponse(results(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router


def _camera(state) -> LiveCamera:
    if state.camera is None:
        raise HTTPError(404, "no camera: start edge-serve with --camera SRC (an index, picamera or a URL)")
    return state.camera


def key_page(error: str | None) -> HTMLResponse:
    """The page's answer to a browser without the API key: a form that asks for it."""
    note = f"<p>{error}</p>" if error else ""
    return HTMLResponse(f"<!doctype html><title>edge-serve</title><h1>edge-serve</h1>{note}"
                        "<form method=get action=/><label>API key <input name=key type=password autofocus>"
                        "</label> <button>Open</button></form>", status_code=401)

