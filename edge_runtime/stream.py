"""Video files and live cameras: frames captured on a thread, overlapped with inference.

Frames come from OpenCV (``edgetl[camera]``) or, on a Raspberry Pi, picamera2. The capture thread
also converts BGR -> RGB and resizes, so the main thread only invokes the interpreter. A video
file is processed frame by frame (nothing dropped); a live camera keeps only the newest frame, so
a slow model shows current frames instead of a growing backlog. Live sources (a camera index or a
network camera's rtsp:// or http(s):// URL) that drop are reopened with backoff instead of ending
the stream; a video file ends at its last frame.
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
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # FFmpeg's own lines on a dropped stream
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


def camera_frames(source: str, give_up_s: float = None, draft_size: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a live camera: an OpenCV index (``0``), ``picamera``, or a network camera's
    URL (rtsp://, http(s)://, ...)."""
    give_up_s = GIVE_UP_S if give_up_s is None else give_up_s
    if is_stream_url(source):
        return network_frames(source, give_up_s, draft_size)
    if source == "picamera":
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise UserError("--camera picamera needs picamera2 (Raspberry Pi OS: apt install python3-picamera2)") from None
        try:
            cam = Picamera2()
            cam.configure(cam.create_video_configuration(main={"format": "RGB888", "size": (640, 480)}))
            cam.start()
        except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
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
        raise UserError(f"--camera {source!r}: give a camera index (0, 1, ...), 'picamera', or a network camera's "
                        "URL (rtsp://..., http://...)") from None
    if not 0 <= index < MAX_CAMERA_INDEX:   # OpenCV crashes on a negative index, raises on a huge one
        raise UserError(f"--camera {index}: a camera index is 0 to {MAX_CAMERA_INDEX - 1} (0 is the first "
                        "camera; see ls /dev/video*)")
    cv2 = _cv2()
    return LiveFrames(lambda: _CvReader(cv2.VideoCapture(index)), f"camera {index}",
                      f"no camera found or it gives no frames (is /dev/video{index} present and free?); check the "
                      "connection or use --video FILE", give_up_s)


MAX_CAMERA_INDEX = 1024
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 5000    # a network camera that does not answer in this long counts as down
GIVE_UP_S = 300.0         # a live source that stays down this long ends the stream


def is_stream_url(source) -> bool:
    return isinstance(source, str) and source.lower().startswith(NETWORK_SCHEMES)


def network_frames(url: str, give_up_s: float = GIVE_UP_S, draft_size: int | None = None) -> "LiveFrames":
    """RGB frames of a network camera. An HTTP MJPEG stream (what most IP cameras serve) is parsed
    here and each JPEG decoded by the same decoder as photos from disk, so a frame is classified
    exactly like the same JPEG saved to a file (``draft_size``: JPEG draft decoding, where the
    deploy folder's manifest allows it for files); anything else (RTSP, other HTTP video) goes
    through OpenCV's FFmpeg."""
    def open_capture():
        if url.lower().startswith(("http://", "https://")):
            reader = MjpegReader.open(url, draft_size)
            if reader is not None:
                return reader
        cv2 = _cv2()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
        return _CvReader(cv2.VideoCapture(url, cv2.CAP_FFMPEG, params))
    return LiveFrames(open_capture, url, "cannot open the stream or it gives no frames; check the address, the "
                      "credentials in it, and that the camera is on and reachable", give_up_s)


class _CvReader:
    """An OpenCV capture giving RGB frames."""

    def __init__(self, cap):
        self.cap = cap

    def isOpened(self) -> bool:
        return self.cap.isOpened()

    def read(self):
        ok, frame = self.cap.read()
        return (True, frame[..., ::-1]) if ok else (False, None)

    def release(self) -> None:
        self.cap.release()


class MjpegReader:
    """Frames of an HTTP ``multipart/x-mixed-replace`` JPEG stream, decoded with Pillow."""

    def __init__(self, response, boundary: bytes, draft_size: int | None = None):
        self.response, self.boundary = response, b"--" + boundary.lstrip(b"-")
        self.draft_size, self._at_part, self._ended = draft_size, False, False

    @classmethod
    def open(cls, url: str, draft_size: int | None = None) -> "MjpegReader | _Closed | None":
        """A reader; ``_Closed`` when the server cannot be reached; None when it answers with
        something other than an MJPEG stream (then OpenCV is asked instead)."""
        import urllib.error
        import urllib.request

        try:
            response = urllib.request.urlopen(url, timeout=OPEN_TIMEOUT_MS / 1000)
        except (urllib.error.URLError, OSError, ValueError):
            return _Closed()
        kind = response.headers.get("Content-Type", "")
        if not kind.lower().startswith("multipart/"):
            response.close()
            return None
        boundary = next((p.split("=", 1)[1].strip().strip('"') for p in kind.split(";") if "boundary=" in p), "")
        if not boundary:
            response.close()
            return _Closed()
        return cls(response, boundary.encode(), draft_size)

    def isOpened(self) -> bool:
        return True

    def _until_boundary(self) -> bytes | None:
        """The bytes before the next boundary line (which is consumed); None at the stream's end."""
        chunks = []
        while True:
            line = self.response.readline()
            if not line:
                return None
            if line.strip() in (self.boundary, self.boundary + b"--"):
                self._ended = line.strip() != self.boundary     # the closing boundary
                return b"".join(chunks)
            chunks.append(line)

    def read(self):
        from .image import ImageError, open_image

        try:
            if self._ended or (not self._at_part and (self._until_boundary() is None or self._ended)):
                return False, None
            self._at_part = False
            length = None
            while True:
                header = self.response.readline()
                if not header:
                    return False, None
                if not header.strip():
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:   # no length given: the part ends at the next boundary
                data = self._until_boundary()
                if data is None:
                    return False, None
                self._at_part = True
                data = data[:-2] if data.endswith(b"\r\n") else data
            else:
                data = self.response.read(length)
                if len(data) < length:
                    return False, None
            return True, np.asarray(open_image(data, draft_size=self.draft_size, name="<stream frame>"))
        except (OSError, ValueError, ImageError):
            return False, None

    def release(self) -> None:
        self.response.close()


class _Closed:
    def isOpened(self) -> bool:
        return False

    def read(self):
        return False, None

    def release(self) -> None:
        pass


class LiveFrames:
    """A live source's RGB frames (``open_capture`` returns a reader: isOpened, read -> (ok,
    RGB frame), release). When it stops giving frames (network blip, camera reboot, USB
    unplugged) it is reopened with backoff (0.5 s doubling to 8 s) until a frame comes again, or
    ends with a one-line error after ``give_up_s`` without one. ``reconnects`` counts the times
    it came back. The first open must work: a wrong address fails at once."""

    def __init__(self, open_capture: Callable, name: str, unavailable: str, give_up_s: float = GIVE_UP_S):
        self.open_capture, self.name, self.give_up_s = open_capture, name, give_up_s
        self.reconnects = 0
        self._cap, self._first = self._open()
        if self._first is None:
            raise UserError(f"{name}: {unavailable}")

    def _open(self):
        cap = self.open_capture()
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            return None, None
        return cap, frame

    def __iter__(self) -> Iterator[np.ndarray]:
        from .log import log

        frame, cap = self._first, self._cap
        try:
            while True:
                if frame is not None:
                    yield frame
                    ok, frame = cap.read()
                    frame = frame if ok else None
                    continue
                cap.release()
                log(f"{self.name}: stream lost; reconnecting")
                cap, frame = self._reconnect()
                self.reconnects += 1
                log(f"{self.name}: reconnected")
        finally:
            if cap is not None:
                cap.release()

    def _reconnect(self):
        deadline, delay = time.monotonic() + self.give_up_s, 0.5
        while True:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            cap, frame = self._open()
            if cap is not None:
                return cap, frame
            if time.monotonic() >= deadline:
                raise UserError(f"{self.name}: no frames for {self.give_up_s:.0f}s after the stream dropped; "
                                "check the camera and the network (--reconnect-for sets how long to wait)")
            delay = min(delay * 2, 8.0)


@dataclass
class StreamStats:
    latencies_ms: list = field(default_factory=list)   # per frame: preprocessed tensor -> scores
    started: float = field(default_factory=time.perf_counter)
    frames: int = 0
    dropped: int = 0          # live: frames replaced by a newer one before the model got to them
    reconnects: int = 0       # live: times the source dropped and came back

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        lat = np.array(self.latencies_ms or [0.0])
        return {"frames": self.frames, "dropped": self.dropped, "reconnects": self.reconnects,
                "seconds": round(wall, 3),
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
    stats = StreamStats()
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
                        stats.dropped += 1
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
        except Exception as e:  # noqa: BLE001 - reported on the main thread
            errors.append(e)
        finally:
            while True:
                try:
                    q.put(END, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

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
    stats.reconnects = getattr(frames, "reconnects", 0)
    if errors:
        e = errors[0]
        raise e if isinstance(e, UserError) else UserError(f"frame capture failed: {e}")
    return stats
