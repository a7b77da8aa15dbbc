"""edge-serve as a user runs it: a real server process on a free loopback port, called over HTTP.

Answers must equal the in-process Classifier; bad requests get their status and a JSON error while
the server keeps serving; overload is refused with 503 + Retry-After, never queued without bound;
a model swap under load loses no request and a damaged model is refused."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx  # the dev extra (tests are clients); the server and edge-predict --server need no client library
import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLES, run_cli
from tests.serving import Server, free_port

KEY = "s3cret-key"
PHOTOS = sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture(scope="module")
def served(deployed, tmp_path_factory):
    """The small run's deploy folder (a copy), served with an API key and small limits."""
    deploy = tmp_path_factory.mktemp("served") / "deploy"
    shutil.copytree(deployed, deploy)
    srv = Server(deploy, "--threads", "2", "--queue", "4", "--timeout", "5", "--max-body", "2MB",
                 "--api-key", KEY, "--name", "textures")
    yield srv
    srv.stop()


def client(srv, **kw) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, **kw)


def classify(c, data: bytes, ctype="image/jpeg", **params):
    return c.post("/v1/classify", content=data, headers={"Content-Type": ctype}, params=params)


# ------------------------------------------------------------------------- answers
def test_classify_answers_equal_the_in_process_classifier(served, deployed):
    from edge_runtime import Classifier
    clf = Classifier(deployed)
    man = json.loads((deployed / "manifest.json").read_text())
    sha = next(a["sha256"] for a in man["artifacts"] if a["precision"] == man["default"])
    with client(served) as c:
        for photo in PHOTOS:
            r = classify(c, photo.read_bytes(), top_k=3)
            assert r.status_code == 200, r.text
            body = r.json()
            want = clf.classify(photo, 3)
            assert [d["label"] for d in body["top_k"]] == [l for l, _ in want]
            assert [d["score"] for d in body["top_k"]] == pytest.approx([s for _, s in want], abs=1e-6)
            assert body["model"]["sha256"] == sha
            assert set(body["latency_ms"]) >= {"decode", "resize", "invoke", "total"}
    assert len(PHOTOS) == 5


def test_multipart_upload_is_the_same_as_a_raw_body(served):
    photo = PHOTOS[0]
    with client(served) as c:
        raw = classify(c, photo.read_bytes()).json()["top_k"]
        form = c.post("/v1/classify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()["top_k"]
    assert raw == form


def test_edge_predict_server_prints_what_local_edge_predict_prints(served, deployed):
    strip = lambda out: [l.rsplit("  (", 1)[0] for l in out.splitlines()]  # noqa: E731 - latency differs
    local = run_cli("edge-predict", deployed, *PHOTOS, "--top-k", "2")
    remote = run_cli("edge-predict", "--server", served.url, *PHOTOS, "--top-k", "2",
                     env={"EDGE_SERVE_API_KEY": KEY})
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert strip(remote.stdout) == strip(local.stdout) and len(strip(local.stdout)) == 5
    down = run_cli("edge-predict", "--server", f"http://127.0.0.1:{free_port()}", PHOTOS[0])
    assert down.returncode == 2 and down.stderr.startswith("error: ") and "is edge-serve running" in down.stderr


# ------------------------------------------------------------------------- Open Inference Protocol
def test_v2_health_and_model_metadata(served, deployed):
    man = json.loads((deployed / "manifest.json").read_text())
    with client(served) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2/models/textures").json()
        assert meta["name"] == "textures" and meta["versions"] == ["1"]
        s = man["input"]["size"]
        assert {"name": "image", "datatype": "UINT8", "shape": [-1, s, s, 3]} in meta["inputs"]
        assert meta["outputs"][0] == {"name": "scores", "datatype": "FP32", "shape": [-1, len(man["labels"])]}
        assert meta["parameters"]["labels"] == man["labels"]
        assert c.get("/v2/models/textures/ready").json()["ready"] is True
        r = c.get("/v2/models/nope")
        assert r.status_code == 404 and "unknown model" in r.json()["error"]


def test_v2_infer_with_a_uint8_tensor_and_with_encoded_bytes(served, deployed):
    from edge_runtime import Classifier
    from edge_runtime.image import load_image
    clf = Classifier(deployed)
    photos = PHOTOS[:2]
    pixels = np.stack([load_image(p, clf.size, clf.resize_method) for p in photos])
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
    encoded = {"name": "image_bytes", "datatype": "BYTES", "shape": [2],
               "data": [base64.b64encode(p.read_bytes()).decode() for p in photos]}
    outputs = [{"name": "scores"}, {"name": "labels", "parameters": {"top_k": 1}}]
    with client(served) as c:
        for inp, want in ((tensor, [clf.invoke(clf.preprocess(x)) for x in pixels]),
                          (encoded, [clf.predict(p) for p in photos])):
            r = c.post("/v2/models/textures/infer", json={"id": "42", "inputs": [inp], "outputs": outputs})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == "42" and body["model_name"] == "textures"
            scores = next(o for o in body["outputs"] if o["name"] == "scores")
            assert scores["shape"] == [2, len(clf.labels)] and scores["datatype"] == "FP32"
            assert np.allclose(np.reshape(scores["data"], scores["shape"]), want, atol=1e-6)
            labels = next(o for o in body["outputs"] if o["name"] == "labels")
            assert labels["data"] == [clf.labels[int(np.argmax(w))] for w in want]


# ------------------------------------------------------------------------- refusals
def test_api_key_is_required_except_for_health_probes(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        r = classify(c, PHOTOS[0].read_bytes())
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert c.get("/v2/models/textures", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v2/models/textures", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200


def _bomb_png() -> bytes:
    """A tiny PNG that declares 30000 x 30000 pixels."""
    import struct
    import zlib
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case", ["too_large", "not_an_image", "truncated_jpeg", "bomb", "bad_shape", "bad_dtype",
                                  "bad_json", "unknown_model", "bad_top_k"])
def test_each_bad_request_gets_its_status_and_a_json_error_and_the_server_keeps_serving(served, case):
    good = PHOTOS[0].read_bytes()
    with client(served) as c:
        r = {
            "too_large": lambda: classify(c, b"\xff" * (2_000_001)),
            "not_an_image": lambda: classify(c, b"hello, not a photo"),
            "truncated_jpeg": lambda: classify(c, good[: len(good) // 3]),
            "bomb": lambda: classify(c, _bomb_png(), ctype="image/png"),
            "bad_shape": lambda: c.post("/v2/models/textures/infer", json={"inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [1, 7, 7, 3], "data": [0] * 147}]}),
            "bad_dtype": lambda: c.post("/v2/models/textures/infer", json={"inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}]}),
            "bad_json": lambda: c.post("/v2/models/textures/infer", content=b"{not json",
                                       headers={"Content-Type": "application/json"}),
            "unknown_model": lambda: c.post("/v2/models/other/infer", json={"inputs": []}),
            "bad_top_k": lambda: classify(c, good, top_k="many"),
        }[case]()
        want = {"too_large": 413, "not_an_image": 415, "unknown_model": 404}.get(case, 400)
        assert r.status_code == want, r.text
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]
        assert classify(c, good).status_code == 200


def test_a_client_that_disconnects_mid_upload_does_not_hurt_the_server(served):
    host, port = "127.0.0.1", served.port
    for _ in range(3):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                      "Content-Type: image/jpeg\r\nContent-Length: 500000\r\n\r\n".encode() + b"\xff\xd8" * 2000)
    with client(served) as c:
        assert classify(c, PHOTOS[0].read_bytes()).status_code == 200
        assert c.get("/v2/health/live").status_code == 200


def test_metrics_are_prometheus_text_with_requests_latency_queue_and_model(served, deployed):
    with client(served) as c:
        classify(c, PHOTOS[0].read_bytes())
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert any(s.labels == {"route": "classify", "status": "200"} and s.value >= 1
               for s in fams["edge_serve_requests"].samples)
    assert "edge_serve_request_seconds" in fams and "edge_serve_queue_depth" in fams
    man = json.loads((deployed / "manifest.json").read_text())
    sha = next(a["sha256"] for a in man["artifacts"] if a["precision"] == man["default"])
    assert any(s.labels.get("sha256") == sha for s in fams["edge_serve_model_info"].samples)


# ------------------------------------------------------------------------- load
async def _fire(url: str, data: bytes, rate: float, seconds: float, timeout: float) -> list[tuple[int, float, dict]]:
    """Open loop: one request every 1/rate s for ``seconds``, whatever the answers do."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "image/jpeg"},
                                 timeout=timeout, limits=limits) as c:
        async def one():
            t = time.perf_counter()
            try:
                r = await c.post("/v1/classify", content=data)
                return r.status_code, time.perf_counter() - t, dict(r.headers)
            except httpx.HTTPError as e:
                return type(e).__name__, time.perf_counter() - t, {}
        tasks, start = [], time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one()))
        return await asyncio.gather(*tasks)


def _sequential_ms(c, data: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert classify(c, data).status_code == 200
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def test_overload_is_answered_with_503_and_retry_after_and_the_service_recovers(served):
    data = PHOTOS[0].read_bytes()
    with client(served) as c:
        _sequential_ms(c, data, 5)
        before = _sequential_ms(c, data, 20)
    sustainable = 2 / before                      # two inference threads
    results = asyncio.run(_fire(served.url, data, rate=4 * sustainable, seconds=2.0, timeout=20))
    statuses = [s for s, _, _ in results]
    assert len(results) == int(4 * sustainable * 2.0)                    # none lost
    assert set(statuses) <= {200, 503}, sorted(set(map(str, statuses)))  # every one answered, no 504 or errors
    assert 503 in statuses and 200 in statuses
    assert all(h.get("retry-after") for s, _, h in results if s == 503)
    assert max(t for _, t, _ in results) < 5 + 1                         # none past --timeout
    with client(served) as c:
        after = _sequential_ms(c, data, 20)
    assert after < 3 * before + 0.005, (before, after)


# ------------------------------------------------------------------------- hot swap
@pytest.fixture()
def swappable(deployed, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(deployed, deploy)
    srv = Server(deploy, "--threads", "2", "--queue", "16", "--timeout", "10", "--name", "textures",
                 "--api-key", KEY)
    yield srv, deploy
    srv.stop()


def _set_default(deploy: Path, precision: str) -> str:
    """Point the manifest at another of its verified artifacts (what a re-conversion does)."""
    from edge_runtime.atomic import write_json
    man = json.loads((deploy / "manifest.json").read_text())
    man["default"] = precision
    write_json(deploy / "manifest.json", man)
    return next(a["sha256"] for a in man["artifacts"] if a["precision"] == precision)


async def _steady(url: str, data: bytes, clients: int, stop: asyncio.Event) -> list[tuple[int, str]]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "image/jpeg"},
                                 timeout=30) as c:
        out = []

        async def loop():
            while not stop.is_set():
                try:
                    r = await c.post("/v1/classify", content=data)
                    out.append((r.status_code, r.json()["model"]["sha256"] if r.status_code == 200 else r.text))
                except httpx.HTTPError as e:
                    out.append((type(e).__name__, ""))
        await asyncio.gather(*(loop() for _ in range(clients)))
        return out


def test_hot_swap_under_continuous_load_fails_no_request(swappable):
    srv, deploy = swappable
    data = PHOTOS[1].read_bytes()
    fp32 = _set_default(deploy, "fp32")

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.ensure_future(_steady(srv.url, data, 4, stop))
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            r = await c.post("/v2/repository/models/textures/load")
        await asyncio.sleep(1.0)
        stop.set()
        return r, await load
    r, results = asyncio.run(scenario())
    assert r.status_code == 200 and r.json()["sha256"] == fp32, r.text
    assert results and all(s == 200 for s, _ in results), [x for x in results if x[0] != 200][:3]
    shas = [sha for _, sha in results]
    assert shas[-1] == fp32 and shas[0] != fp32          # served the old model, then the new one


def test_a_damaged_new_model_is_refused_and_the_old_one_keeps_answering(swappable):
    srv, deploy = swappable
    with client(srv) as c:
        old = classify(c, PHOTOS[0].read_bytes()).json()["model"]["sha256"]
        art = next(a for a in json.loads((deploy / "manifest.json").read_text())["artifacts"] if a["sha256"] == old)
        blob = bytearray((deploy / art["file"]).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (deploy / art["file"]).write_bytes(bytes(blob))
        r = c.post("/v2/repository/models/textures/load")
        assert r.status_code == 400 and "refused" in r.json()["error"] and old[:12] in r.json()["error"]
        again = classify(c, PHOTOS[0].read_bytes())
        assert again.status_code == 200 and again.json()["model"]["sha256"] == old


def test_sighup_swaps_the_model_like_the_load_endpoint(swappable):
    srv, deploy = swappable
    fp32 = _set_default(deploy, "fp32")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 30
    with client(srv) as c:
        while time.time() < deadline:
            if c.get("/v2/models/textures").json()["parameters"]["sha256"] == fp32:
                break
            time.sleep(0.2)
        assert c.get("/v2/models/textures").json()["parameters"]["sha256"] == fp32


# ------------------------------------------------------------------------- command line and install
def test_a_bad_deploy_folder_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_runtime.serve.cli", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_binding_beyond_loopback_without_a_key_warns(deployed, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(deployed, deploy)
    srv = Server(deploy, "--host", "0.0.0.0", "--threads", "1")
    try:
        assert "warning: serving on 0.0.0.0 without an API key" in srv.output()
    finally:
        srv.stop()


def test_inference_threads_are_pinned_only_when_they_fill_the_cores(monkeypatch):
    from edge_runtime.serve.pool import core_plan
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5, 7})
    assert core_plan(4) == [2, 3, 5, 7]            # one busy interpreter per allowed core
    assert core_plan(2) is None                    # cores left over: no one right placement
    assert core_plan(8) is None                    # oversubscribed
    assert core_plan(4, pin=False) is None         # --no-pin
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert core_plan(1) is None                    # nothing to choose on one core


def _single_core_tasks(pid: int) -> list[str]:
    """CPU lists of the process's threads that may run on exactly one core."""
    out = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        allowed = next(l.split(":", 1)[1].strip() for l in status.read_text().splitlines()
                       if l.startswith("Cpus_allowed_list"))
        if allowed.isdigit():
            out.append(allowed)
    return out


def test_a_server_whose_threads_fill_the_cores_pins_one_per_core(deployed, tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    deploy = tmp_path / "deploy"
    shutil.copytree(deployed, deploy)
    srv = Server(deploy, "--threads", len(cores), "--queue", "2")
    try:
        if len(cores) == 1:   # nothing to choose
            assert "pinned" not in srv.output()
            return
        deadline = time.time() + 10
        while sorted(_single_core_tasks(srv.proc.pid), key=int) != [str(c) for c in cores]:
            assert time.time() < deadline, _single_core_tasks(srv.proc.pid)
            time.sleep(0.1)
        assert "pinned to cores" in srv.output()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with only `pip install .[edge,serve,serve-grpc]`."""
    venv = tmp_path_factory.mktemp("serve") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(ROOT / "constraints.txt"), f"{ROOT}[edge,serve,serve-grpc]"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


def test_serve_and_serve_grpc_extras_bring_no_tensorflow_and_serve(serve_venv, deployed, tmp_path):
    out = subprocess.run([str(serve_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                         capture_output=True, text=True, check=True).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in out.splitlines()}
    assert {"fastapi", "uvicorn", "prometheus-client", "ai-edge-litert", "grpcio", "protobuf"} <= names
    assert not {n for n in names if n.startswith(("tensorflow", "keras", "tf-keras", "tf_keras"))}
    deploy = tmp_path / "deploy"
    shutil.copytree(deployed, deploy)
    grpc_port = free_port()
    srv = Server(deploy, "--threads", "1", "--grpc-port", grpc_port, python=str(serve_venv / "bin" / "python"))
    try:
        r = httpx.post(f"{srv.url}/v1/classify", content=PHOTOS[0].read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200 and r.json()["top_k"]
        assert _grpc_server_ready(f"127.0.0.1:{grpc_port}")
    finally:
        srv.stop()


def _grpc_server_ready(address: str) -> bool:
    import grpc

    from edge_runtime.serve import inference_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                   request_serializer=pb.ServerReadyRequest.SerializeToString,
                                   response_deserializer=pb.ServerReadyResponse.FromString)
        return call(pb.ServerReadyRequest(), timeout=30).ready


def test_several_worker_processes_serve_and_all_take_a_swap(deployed, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(deployed, deploy)
    srv = Server(deploy, "--workers", "2", "--threads", "1", "--name", "textures")
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            old = {classify(c, PHOTOS[0].read_bytes()).json()["model"]["sha256"] for _ in range(10)}
            fp32 = _set_default(deploy, "fp32")
            assert fp32 not in old
            r = c.post("/v2/repository/models/textures/load")
            assert r.status_code == 200, r.text
            deadline, seen = time.time() + 20, set()
            while time.time() < deadline:
                seen = {classify(c, PHOTOS[0].read_bytes(), top_k=1).json()["model"]["sha256"] for _ in range(20)}
                if seen == {fp32}:
                    break
                time.sleep(0.3)
            assert seen == {fp32}
            from prometheus_client.parser import text_string_to_metric_families
            fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
            served = sum(s.value for s in fams["edge_serve_requests"].samples
                         if s.name.endswith("_total") and s.labels.get("route") == "classify")
            assert served >= 30   # summed over both processes
            # every process takes the swap within its 0.5 s watch; then no process reports the old model
            deadline, loaded = time.time() + 20, set()
            while time.time() < deadline and loaded != {fp32}:
                fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
                info = fams["edge_serve_model_info"].samples
                loaded = {s.labels["sha256"] for s in info if s.value == 1}
                time.sleep(0.2)
            assert loaded == {fp32}, [(s.labels, s.value) for s in info]
            assert len({s.labels["pid"] for s in info if s.value == 1}) == 2      # both processes, new model
    finally:
        srv.stop()


def test_the_load_benchmark_splits_the_slowest_answers_time_by_where_it_went():
    """serve_load's tail table: the slowest 1 % against the median band, each answer's client
    time split by the server's own latency_ms (queue, work, rest of handler, outside it)."""
    from benchmarks.serve_load import tail_breakdown

    lat = [0.004] * 198 + [0.020, 0.030]                 # seconds, as the load generator measures
    fast = {"queue": 0.1, "decode": 0.5, "resize": 0.4, "invoke": 2.0, "total": 3.2}
    slow = {"queue": 12.0, "decode": 0.5, "resize": 0.5, "invoke": 2.0, "total": 15.5}
    t = tail_breakdown(lat, [fast] * 198 + [slow, slow])
    s, m = t["slowest_1_percent"], t["median_band"]
    assert s["n"] == 2 and s["total"] == 25.0 and s["queue"] == 12.0 and s["work"] == 3.0
    assert s["handler_rest"] == 0.5 and s["outside_handler"] == 9.5
    assert m["total"] == 4.0 and m["outside_handler"] == 0.8
    assert tail_breakdown([0.5], [None]) == {}           # a refused request has no split
