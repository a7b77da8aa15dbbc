"""Quantization-aware training (converter.qat): the fake-quant network computes the float network
when its quantizers are off (batch norm folded exactly), its quantizers sit where the int8 file
stores tensors, and `edgetl convert --qat` ships an int8-qat file with the post-training file's
operators, delegation and metadata, both recorded as candidates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli


def _ops(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    return sorted(o["op_name"] for o in it._get_ops_details())   # noqa: SLF001


@pytest.fixture(scope="module")
def qat_deploy(small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "deploy"
    r = run_cli("edgetl", "convert", small_run, "--qat", "--qat-epochs", "1", "--no-int8-recovery", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stderr


def test_qat_network_with_quantizers_off_is_the_float_network(small_run):
    from converter.qat import build_qat_model
    from trainer.evaluate import load_run_model

    model = load_run_model(small_run)
    q = build_qat_model(model)
    q.set_mode(quantize=False)
    x = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
    assert q.folded > 40 and len(q.weights) == q.folded + 1      # every conv's batch norm, + the head
    assert np.allclose(np.asarray(q.model(x)), np.asarray(model(x)), atol=1e-5)


def test_convert_qat_records_both_int8_candidates(qat_deploy):
    out, log = qat_deploy
    m = json.loads((out / "manifest.json").read_text())
    arts = {a["precision"]: a for a in m["artifacts"]}
    assert set(arts) == {"fp32", "int8", "int8-qat"}
    assert all(a["verification"]["status"] == "passed" for a in arts.values())
    q = arts["int8-qat"]["quantization"]
    assert q["epochs"] == 1 and q["folded_batch_norms"] > 40 and q["fake_quant_tensors"] > 40
    assert [h["epoch"] for h in q["history"]] == [0, 1]
    cands = {c["precision"]: c for c in m["int8_candidates"]}
    assert set(cands) == {"int8", "int8-qat"}
    for p, c in cands.items():
        assert c["test_accuracy"] == arts[p]["verification"]["accuracy"] and 0 <= c["val_agreement"] <= 1
    best = max(cands.values(), key=lambda c: (c["val_agreement"], c["precision"] == "int8"))
    assert m["default"] == best["precision"]
    assert "qat epoch 1/1" in log


def test_qat_file_has_the_post_training_files_operators_delegation_and_metadata(qat_deploy):
    from edge_runtime.classifier import Classifier

    out, _ = qat_deploy
    assert _ops(out / "model_int8-qat.tflite") == _ops(out / "model_int8.tflite")
    m = json.loads((out / "manifest.json").read_text())
    arts = {a["precision"]: a for a in m["artifacts"]}
    for key in ("fully_delegated", "not_delegated"):
        assert arts["int8-qat"]["verification"][key] == arts["int8"]["verification"][key]
    assert arts["int8-qat"]["input"] == {**arts["int8"]["input"]} and arts["int8-qat"]["output"]["probabilities"]
    clf = Classifier(out, precision="int8-qat")
    assert clf.labels == (out / "labels.txt").read_text().split()


def test_fake_quant_network_and_its_file_score_alike(qat_deploy):
    """The gap users report for other tools: here the Keras fake-quant network and the int8 file
    it becomes score within one test photo of each other."""
    out, _ = qat_deploy
    m = json.loads((out / "manifest.json").read_text())
    a = next(a for a in m["artifacts"] if a["precision"] == "int8-qat")
    n = a["verification"]["n"]
    assert abs(a["quantization"]["keras_test_accuracy"] - a["verification"]["accuracy"]) <= 1 / n + 1e-9


def test_ctrl_c_during_the_qat_fine_tune_leaves_the_deploy_folder_as_it_was(deployed, small_run, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys

    out = tmp_path / "deploy"
    shutil.copytree(deployed, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    p = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "convert", str(small_run), "--out", str(out), "--qat",
                          "--qat-epochs", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:            # the fine-tune has started when its first line is out
        seen.append(line)
        if line.startswith("qat: ") and "fine-tuning" in line:
            break
    assert p.poll() is None, "".join(seen[-20:])
    p.send_signal(signal.SIGINT)
    p.stderr.read()
    assert p.wait(timeout=300) != 0
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert not list(tmp_path.glob(".deploy.staging-*"))
