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
