"""Device runtime: TensorFlow-free install, the converter's accuracy reproduced, bad input."""
import json
import shutil
import subprocess

import pytest

from tests.conftest import SAMPLES, run_cli


def test_edge_only_install_classifies_sample_photos(edge_venv, deployed):
    photos = sorted(SAMPLES.glob("*.jpg"))
    r = subprocess.run([str(edge_venv / "bin" / "edge-predict"), str(deployed), *map(str, photos), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert [l["file"] for l in lines] == list(map(str, photos))
    assert all(len(l["top_k"]) == 3 and l["top_k"][0]["label"] in {"dotted", "leopard", "striped"} for l in lines)


def test_classifying_never_imports_tensorflow(edge_venv, deployed):
    code = ("import sys\nfrom edge_runtime import Classifier\n"
            f"c = Classifier({str(deployed)!r})\nprint(c.classify({str(SAMPLES / 'daisy.jpg')!r}))\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'\n")
    r = subprocess.run([str(edge_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_eval_reproduces_the_converters_accuracy(deployed, small_run):
    m = json.loads((deployed / "manifest.json").read_text())
    for a in m["artifacts"]:
        r = run_cli("edge-predict", deployed, "--precision", a["precision"], "--eval", small_run / "split" / "test.tsv",
                    "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.splitlines()[-1])
        assert got["n"] == a["verification"]["n"] and got["accuracy"] == a["verification"]["accuracy"]


def _copy(deployed, tmp_path):
    d = tmp_path / "deploy"
    shutil.copytree(deployed, d)
    return d


@pytest.mark.parametrize("damage,msg", [
    (lambda d: (d / "model_int8.tflite").unlink(), "missing"),
    (lambda d: (d / "model_int8.tflite").write_bytes((d / "model_int8.tflite").read_bytes()[:5000]), "sha256"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "damaged manifest"),
])
def test_damaged_deploy_folder_is_refused_by_name(deployed, tmp_path, damage, msg):
    d = _copy(deployed, tmp_path)
    damage(d)
    r = run_cli("edge-predict", d, SAMPLES / "cat.jpg")
    assert r.returncode == 2 and msg in r.stderr and str(d) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 1000])
def test_random_bytes_or_truncated_model_file(tmp_path, deployed, content):
    f = tmp_path / "bad.tflite"
    f.write_bytes(content or (deployed / "model_fp32.tflite").read_bytes()[:20000])
    r = run_cli("edge-predict", f, SAMPLES / "cat.jpg")
    assert r.returncode == 2 and str(f) in r.stderr and "Traceback" not in r.stderr


def test_unreadable_image_among_good_ones(deployed, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run_cli("edge-predict", deployed, SAMPLES / "cat.jpg", bad, SAMPLES / "dog.jpg")
    assert r.returncode == 1
    assert str(SAMPLES / "cat.jpg") in r.stdout and str(SAMPLES / "dog.jpg") in r.stdout
    assert str(bad) in r.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 10-frame 640x480 video written from the real sample photos."""
    import cv2
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for p in sorted(SAMPLES.glob("*.jpg")) * 2:
        w.write(np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB").resize((640, 480)))[..., ::-1]))
    w.release()
    return path


def test_video_gives_one_prediction_per_frame_and_a_summary(deployed, clip):
    r = run_cli("edge-predict", deployed, "--video", clip, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert [f["frame"] for f in frames] == list(range(10))
    assert all(f["top_k"][0]["label"] in {"dotted", "leopard", "striped"} and f["latency_ms"] > 0 for f in frames)
    assert summary["frames"] == 10 and summary["fps"] > 0 and summary["latency_ms"]["p90"] >= summary["latency_ms"]["median"]


def test_video_frames_match_classifying_the_same_frame_directly(deployed, clip):
    """Frames go through the same resize as photos: the stream's scores equal a direct call's."""
    import numpy as np

    from edge_runtime import Classifier
    from edge_runtime.stream import run_stream, video_frames

    clf = Classifier(deployed)
    direct = [clf.classify(np.ascontiguousarray(f), 3) for f in video_frames(clip)]
    streamed = {}
    run_stream(clf, video_frames(clip), lambda n, top, ms: streamed.__setitem__(n, top), max_frames=4)
    assert sorted(streamed) == [0, 1, 2, 3]
    for n, top in streamed.items():
        assert [l for l, _ in top] == [l for l, _ in direct[n]]
        np.testing.assert_allclose([s for _, s in top], [s for _, s in direct[n]], rtol=1e-6)


def test_max_frames_stops_the_stream(deployed, clip):
    r = run_cli("edge-predict", deployed, "--video", clip, "--max-frames", "3", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["summary"]["frames"] == 3


@pytest.mark.parametrize("source", ["7", "picamera"])
def test_missing_camera_is_a_one_line_error(deployed, source):
    r = run_cli("edge-predict", deployed, "--camera", source)
    assert r.returncode == 2 and r.stdout == ""
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "camera" in errors[0]
    assert not [l for l in r.stderr.splitlines() if "Traceback" in l or "WARN" in l]


def test_unreadable_video_is_named(deployed, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    r = run_cli("edge-predict", deployed, "--video", bad)
    assert r.returncode == 2 and str(bad) in r.stderr.splitlines()[-1]


def test_benchmark_reports_raw_and_end_to_end_latency_per_artifact_and_thread_count(deployed):
    r = run_cli("edge-predict", deployed, "--benchmark", "--runs", "5", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["kind"] == "edgetl-device-benchmark/1" and rep["machine"]["cores"] >= 1
    man = json.loads((deployed / "manifest.json").read_text())
    shas = {a["precision"]: a["sha256"] for a in man["artifacts"]}
    assert {row["precision"] for row in rep["rows"]} == set(shas)
    for row in rep["rows"]:
        assert row["sha256"] == shas[row["precision"]]       # how `edgetl bench merge` joins accuracy
        assert row["raw_ms"]["runs"] == 5 and 0 < row["raw_ms"]["median"] <= row["raw_ms"]["p90"]
        assert row["end_to_end_ms"]["median"] > 0 and row["resize"] == man["input"]["resize"]  # e2e includes it


def test_converter_verifies_jpeg_draft_decoding_before_the_device_uses_it(deployed):
    m = json.loads((deployed / "manifest.json").read_text())
    for a in m["artifacts"]:
        d = a["verification"]["jpeg_draft"]
        assert 0 <= d["accuracy"] <= 1 and 0 <= d["agreement_with_full_decode"] <= 1
    ok = all(abs(a["verification"]["jpeg_draft"]["accuracy"] - a["verification"]["accuracy"]) <= 0.01
             for a in m["artifacts"])
    assert m["input"]["jpeg_draft"] is ok
