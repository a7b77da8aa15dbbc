"""Network cameras: an MJPEG stream on loopback is classified like the same JPEG from disk, and a
stream that drops is reopened instead of ending the run."""
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, SAMPLES, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, jpeg, fps: float = 20) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "tests.mjpeg_server", str(port), str(fps), str(jpeg)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def frame_jpeg(tmp_path):
    path = tmp_path / "frame.jpg"
    Image.open(SAMPLES / "cat.jpg").convert("RGB").resize((640, 480)).save(path, quality=90)
    return path


def _watch(deployed, port: int, *options) -> subprocess.Popen:
    """edge-predict on the loopback camera, running beside the test."""
    return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", str(deployed), "--camera",
                             f"http://127.0.0.1:{port}/stream.mjpg", "--json", *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"frame"')]


def _summary(stdout: str) -> dict:
    return next(json.loads(line)["summary"] for line in stdout.splitlines() if line.startswith('{"summary"'))


def test_mjpeg_frames_are_classified_like_the_same_jpeg_from_disk(deployed, frame_jpeg):
    from edge_runtime.classifier import Classifier

    port = _free_port()
    server = _serve(port, frame_jpeg)
    try:
        r = run_cli("edge-predict", deployed, "--camera", f"http://127.0.0.1:{port}/stream.mjpg",
                    "--max-frames", "8", "--top-k", "3", "--json", timeout=60)
    finally:
        server.kill()
    assert r.returncode == 0, r.stderr[-2000:]
    want = Classifier(deployed).classify(str(frame_jpeg), 3)
    frames = _frames(r.stdout)
    assert 1 <= len(frames) <= 8
    for f in frames:
        got = [(t["label"], t["score"]) for t in f["top_k"]]
        assert [l for l, _ in got] == [l for l, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)   # same decoder, same pixels
    s = _summary(r.stdout)
    assert s["reconnects"] == 0 and s["frames"] == len(frames)


def test_a_url_given_to_video_is_read_as_a_live_stream(deployed, frame_jpeg):
    port = _free_port()
    server = _serve(port, frame_jpeg)
    try:
        r = run_cli("edge-predict", deployed, "--video", f"http://127.0.0.1:{port}/stream.mjpg", "--max-frames", "3",
                    "--json", timeout=60)
    finally:
        server.kill()
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no such video file" not in r.stderr and _summary(r.stdout)["frames"] >= 1


def test_a_dropped_stream_is_reopened_and_counted(deployed, frame_jpeg):
    port = _free_port()
    server = _serve(port, frame_jpeg)
    client = _watch(deployed, port, "--max-frames", "80")
    try:
        time.sleep(1.5)                       # frames flowing
        assert client.poll() is None
        server.kill()
        server.wait()
        time.sleep(1.0)                       # the camera is down for a while
        server = _serve(port, frame_jpeg)
        out, err = client.communicate(timeout=60)
    finally:
        server.kill()
        client.kill()
    assert client.returncode == 0, err[-2000:]
    assert "stream lost; reconnecting" in err and "reconnected" in err
    s = _summary(out)
    assert s["reconnects"] == 1 and s["frames"] >= 2


def test_a_network_camera_that_is_not_there_is_one_line_and_exit_2(deployed):
    r = run_cli("edge-predict", deployed, "--camera", f"http://127.0.0.1:{_free_port()}/stream.mjpg", timeout=60)
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "cannot open the stream" in errors[0] and "127.0.0.1" in errors[0]


def test_a_stream_that_stays_down_ends_after_reconnect_for(deployed, frame_jpeg):
    port = _free_port()
    server = _serve(port, frame_jpeg)
    client = _watch(deployed, port, "--reconnect-for", "2")
    try:
        time.sleep(1.5)
        server.kill()
        out, err = client.communicate(timeout=60)
    finally:
        server.kill()
        client.kill()
    assert client.returncode == 2
    assert "no frames for 2s after the stream dropped" in err


@pytest.mark.parametrize("with_length", [True, False])
def test_mjpeg_parts_are_read_with_or_without_content_length(tmp_path, with_length):
    import io

    from edge_runtime.image import open_image
    from edge_runtime.stream import MjpegReader

    jpegs = []
    for colour in [(200, 30, 30), (30, 200, 30), (30, 30, 200)]:
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), colour).save(buf, "JPEG")
        jpegs.append(buf.getvalue())
    body = b"".join(b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + (b"Content-Length: %d\r\n" % len(j) if with_length else b"") + b"\r\n" + j + b"\r\n"
                    for j in jpegs) + b"--frame--\r\n"
    reader = MjpegReader(io.BytesIO(body), b"frame")
    for j in jpegs:
        ok, frame = reader.read()
        assert ok and np.array_equal(frame, np.asarray(open_image(j)))
    assert reader.read() == (False, None)
