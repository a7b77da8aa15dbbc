"""edge-serve as standard Open Inference Protocol clients see it: Triton's published client
library, with its default settings (binary tensor data on), in an environment of its own, against
the real server process on loopback. Answers must equal the in-process Classifier."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLES, built_once
from tests.serving import Server, free_port

KEY = "s3cret-key"
PHOTOS = sorted(SAMPLES.glob("*.jpg"))
CLIENT = ROOT / "tests" / "oip_client.py"


@pytest.fixture(scope="session")
def client_python(tmp_path_factory) -> Path:
    """The client library's own virtual environment (tests/oip-client-requirements.txt)."""
    def build(folder: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
        r = subprocess.run([str(folder / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "-r", str(ROOT / "tests" / "oip-client-requirements.txt")],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr

    return built_once(tmp_path_factory, "oip-client", build) / "venv" / "bin" / "python"


@pytest.fixture(scope="module")
def served(deployed, tmp_path_factory):
    srv = _serve(deployed, tmp_path_factory.mktemp("oip"), "--threads", "2", "--queue", "4")
    yield srv
    srv.stop()


def _serve(deployed, folder: Path, *limits) -> Server:
    """A copy of the deploy folder served over HTTP and gRPC with the API key; ``address`` per protocol."""
    shutil.copytree(deployed, folder / "deploy")
    grpc_port = free_port()
    srv = Server(folder / "deploy", *limits, "--api-key", KEY, "--name", "textures", "--grpc-port", grpc_port)
    srv.address = {"http": f"127.0.0.1:{srv.port}", "grpc": f"127.0.0.1:{grpc_port}"}
    return srv


def _client(python: Path, *args) -> dict:
    r = subprocess.run([str(python), str(CLIENT), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def pixels(deployed, tmp_path_factory) -> Path:
    """The sample photos resized to the model's input as edge-predict resizes them (uint8 NHWC)."""
    from edge_runtime import Classifier
    from edge_runtime.image import load_image

    clf = Classifier(deployed)
    path = tmp_path_factory.mktemp("pixels") / "pixels.npy"
    np.save(path, np.stack([load_image(p, clf.size, clf.resize_method) for p in PHOTOS]))
    return path


def _expected(deployed, pixels: Path) -> tuple[np.ndarray, np.ndarray]:
    """(scores of the encoded photos, scores of the resized pixels) from the in-process Classifier."""
    from edge_runtime import Classifier

    clf = Classifier(deployed)
    clf.probabilities = True
    encoded = np.stack([clf.predict(p) for p in PHOTOS])
    resized = np.stack([clf.invoke(clf.preprocess(x)) for x in np.load(pixels)])
    return encoded, resized


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_client_with_its_defaults_reads_metadata_and_infers_like_the_classifier(
        client_python, served, deployed, pixels, protocol):
    from edge_runtime import Classifier

    got = _client(client_python, "check", protocol, served.address[protocol], "textures", KEY, pixels, *PHOTOS)
    labels = Classifier(deployed).labels
    assert got["live"] and got["ready"] and got["model_ready"]
    assert "binary_tensor_data" in got["server"]["extensions"]
    assert got["model"]["name"] == "textures"
    assert [i["name"] for i in got["model"]["inputs"]] == ["image", "image_bytes"]
    encoded, resized = _expected(deployed, pixels)
    assert np.allclose(got["bytes"]["scores"], encoded, atol=1e-6)
    assert np.allclose(got["uint8"]["scores"], resized, atol=1e-6)
    top = [[labels[i] for i in row] for row in np.argsort(-resized, axis=1, kind="stable")[:, :3]]
    assert got["uint8"]["labels"] == top
    assert got["errors"] == ({"unknown_model": "404", "bad_key": "401"} if protocol == "http" else
                             {"unknown_model": "StatusCode.NOT_FOUND", "bad_key": "StatusCode.UNAUTHENTICATED"})


@pytest.fixture(scope="module")
def one_at_a_time(deployed, tmp_path_factory):
    """A server that runs one request at a time and keeps none waiting."""
    srv = _serve(deployed, tmp_path_factory.mktemp("oip-full"), "--threads", "1", "--queue", "0")
    yield srv
    srv.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_client_meets_a_full_queue_with_its_overload_status(client_python, one_at_a_time, protocol):
    """20 requests of 16 photos at once for one inference thread and no place in the queue: those
    that find it busy are refused at once (503 / RESOURCE_EXHAUSTED), the admitted ones answer."""
    got = _client(client_python, "flood", protocol, one_at_a_time.address[protocol], "textures", KEY, 20, PHOTOS[0])
    ok, full = ("200", "503") if protocol == "http" else ("OK", "StatusCode.RESOURCE_EXHAUSTED")
    assert set(got["statuses"]) <= {ok, full} and full in got["statuses"] and ok in got["statuses"]


def test_serve_load_drives_v1_and_the_binary_oip_route_and_reports_both(deployed, tmp_path):
    """The load benchmark itself, briefly: both routes answered 200 by a real server process."""
    from benchmarks.serve_load import main

    main([str(deployed), "--images", str(SAMPLES), "--seconds", "0.5", "--repeats", "1", "--rss-requests", "40",
          "--threads", "1", "--out", str(tmp_path)])
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    for route in ("v1_classify", "oip_binary"):
        served = report["rounds"][0][route]["served"]
        assert served["requests"] > 0 and set(served["status"]) == {"200"}
        assert report["ratios"][f"throughput_over_in_process_{route}"] > 0
    assert sum(s["requests"] for s in report["rss_mb"]["soak"].values()) == 40
    assert "oip_binary" in next(tmp_path.glob("*.md")).read_text()


def test_the_first_line_edge_serve_prints_is_its_own(served):
    """LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" is held back (--verbose shows it)."""
    lines = served.output().splitlines()
    assert lines[0].startswith("edge-serve: textures from ") and "and grpc://127.0.0.1:" in lines[0], lines[:3]
    assert not any("TensorFlow Lite" in line or "XNNPACK" in line for line in lines), lines[:5]
