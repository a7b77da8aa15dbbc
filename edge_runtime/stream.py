"""Video files and live cameras: frames captured on a thread, overlapped with inference.

Frames come from OpenCV (``edgetl[camera]``) or, on a Raspberry Pi, picamera2. The capture thread
also converts BGR -> RGB and resizes, so the main thread only invokes the interpreter. A video
file is processed frame by frame (nothing dropped); a live camera keeps only the newest frame, so
a slow model shows current frames instead of a growing backlog.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import UserError


def _cv2():
    # OpenCV prints its own multi-line warnings for a missing camera; our one-line error says it all
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    try:
        import cv2
    except ImportError:
        raise UserError("video and camera input need OpenCV: pip install 'edgetl[camera]' "
                        "(on a Raspberry Pi camera module, picamera2 works without it)") from None
    return cv2


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """RGB frames of a video file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such video file")
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise UserError(f"{p}: not a readable video (unknown container or codec); try an .mp4/.avi file")
    ok, frame = cap.read()
    if not ok:
        cap.release()
        raise UserError(f"{p}: video has no decodable frames")
    return _rgb_frames(cap, frame)


def _rgb_frames(cap, first) -> Iterator[np.ndarray]:
    """An opened OpenCV capture's frames as RGB, starting with the already-read ``first``."""
    try:
        f = first
        while f is not None:
            yield f[..., ::-1]
            ok, f = cap.read()
            f = f if ok else None
    finally:
        cap.release()


def camera_frames(source: str) -> Iterator[np.ndarray]:
    """RGB frames of a live camera: an OpenCV index (``0``) or ``picamera``."""
    if source == "picamera":
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise UserError("--camera picamera needs picamera2 (Raspberry Pi OS: apt install python3-picamera2)") from None
        try:
            cam = Picamera2()
            cam.configure(cam.create_video_configuration(main={"format": "RGB888", "size": (640, 480)}))
            cam.start()
        except Exception as e:
            raise UserError(f"picamera: camera not available ({str(e)[:100]}); check the ribbon cable and "
                            "that no other program holds the camera") from None

        def gen_pi():
            try:
                while True:
                    yield cam.capture_array()[..., 2::-1]  # picamera2 "RGB888" is B, G, R in memory
            finally:
                cam.stop()
        return gen_pi()
    try:
        index = int(source)
    except ValueError:
        raise UserError(f"--camera {source!r}: give a camera index (0, 1, ...) or 'picamera'") from None
    if not 0 <= index < MAX_CAMERA_INDEX:   # OpenCV crashes on a negative index, raises on a huge one
        raise UserError(f"--camera {index}: a camera index is 0 to {MAX_CAMERA_INDEX - 1} (0 is the first "
                        "camera; see ls /dev/video*)")
    cv2 = _cv2()
    cap = cv2.VideoCapture(index)
    ok, frame = (cap.read() if cap.isOpened() else (False, None))
    if not ok:
        cap.release()
        raise UserError(f"camera {index}: no camera found or it gives no frames (is /dev/video{index} present "
                        "and free?); check the connection or use --video FILE")
    return _rgb_frames(cap, frame)


MAX_CAMERA_INDEX = 1024


@dataclass
class StreamStats:
    latencies_ms: list = field(default_factory=list)   # per frame: preprocessed tensor -> scores
    started: float = field(default_factory=time.perf_counter)
    frames: int = 0

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        lat = np.array(self.latencies_ms or [0.0])
        return {"frames": self.frames, "seconds": round(wall, 3),
                "fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
                "latency_ms": {"median": round(float(np.median(lat)), 3),
                               "p90": round(float(np.percentile(lat, 90)), 3)}}


def run_stream(clf, frames: Iterator[np.ndarray], on_result: Callable[[int, list, float], None],
               max_frames: int | None = None, live: bool = False, top_k: int = 3) -> StreamStats:
    """Classify ``frames`` with ``clf``; preprocessing runs on a capture thread beside inference.

    ``live``: keep only the newest frame (camera); otherwise every frame is classified (video).
    Ctrl-C stops cleanly; the stats cover the frames done.
    """
    q: queue.Queue = queue.Queue(maxsize=1 if live else 4)
    stop = threading.Event()
    END = object()
    errors: list = []

    def capture():
        try:
            for n, frame in enumerate(frames):
                if stop.is_set() or (max_frames is not None and n >= max_frames):
                    break
                item = (n, clf.preprocess(frame, workers=1))  # already beside inference
                if live:
                    try:
                        q.get_nowait()          # drop the stale frame
                    except queue.Empty:
                        pass
                    q.put(item)
                else:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except Exception as e:  # reported on the main thread
            errors.append(e)
        finally:
            while True:
                try:
                    q.put(END, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    stats = StreamStats()
    t = threading.Thread(target=capture, name="edgetl-capture", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is END:
                break
            n, x = item
            t0 = time.perf_counter()
            scores = clf.invoke(x)
            ms = (time.perf_counter() - t0) * 1e3
            stats.frames += 1
            stats.latencies_ms.append(ms)
            order = np.argsort(-scores, kind="stable")[:top_k]
            on_result(n, [(clf.labels[i], float(scores[i])) for i in order], ms)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        t.join(timeout=2)
    if errors:
        e = errors[0]
        raise e if isinstance(e, UserError) else UserError(f"frame capture failed: {e}")
    return stats
