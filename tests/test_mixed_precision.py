"""The GPU box flow on a CPU: a run trained under a mixed-precision policy (what `--mixed-precision
auto` picks on current GPUs) converts, evaluates, explains and compares like a float32 run.

TFLite has no bfloat16 builtin ops, so every reader of a run sees its float32 network: the run
saves model.keras in float32, and runs saved in mixed precision before that are re-instantiated
in float32 on load. A converter failure is one line naming the op and the layer; the converter's
full text goes to RUN/deploy.log.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, WEIGHTS, run_cli
from trainer.runs import rundir as R

W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
# fine-tuning makes the mixed policy matter: the run's own test scores come from its bfloat16 model
MIXED = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", W035,
         "--mixed-precision", "on", "--fine-tune", "--fine-tune-epochs", "1", "--fine-tune-blocks", "1"]


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def mixed_run(request, synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp(f"mixed_{request.param}") / "run"
    r = run_cli("edgetl", "train", synth_data, "--out", run, *MIXED, "--backend", request.param)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _float32_accuracy(run) -> tuple[float, int]:
    """Test accuracy of model.keras read back in this (float32) process, and the split size."""
    from trainer.data.pipeline import load_arrays
    from trainer.data.split import Split
    from trainer.evaluate import load_run_model

    model = load_run_model(run)
    paths, y = Split.of_run(run).paths_labels("test")
    x = load_arrays(paths, int(model.inputs[0].shape[1]), R.read_resize(run)).astype(np.float32)
    pred = np.asarray(model.predict_on_batch(x)).argmax(1)
    return float((pred == y).mean()), len(y)


def test_a_mixed_run_records_its_policy_and_saves_a_float32_model(mixed_run):
    import keras

    from trainer.model import training_precision

    assert R.read_json(mixed_run / R.CONFIG)["hardware"]["precision_policy"] == "mixed_bfloat16"
    raw = keras.saving.load_model(mixed_run / R.MODEL, compile=False)   # as any Keras user loads it
    assert training_precision(raw) == "float32"


def test_a_mixed_run_read_in_float32_scores_what_it_recorded(mixed_run):
    acc, n = _float32_accuracy(mixed_run)
    recorded = R.read_json(mixed_run / R.METRICS)["test"]["accuracy"]
    assert abs(acc - recorded) <= 1 / n + 1e-9, (acc, recorded)


def test_a_mixed_run_converts_to_verified_fp32_and_int8(mixed_run):
    r = run_cli("edgetl", "convert", mixed_run, "--fp32", "--int8")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((mixed_run / "deploy" / "manifest.json").read_text())
    assert m["training"] == {"precision": "mixed_bfloat16"}
    arts = {a["precision"]: a for a in m["artifacts"]}
    assert set(arts) == {"fp32", "int8"} and m["default"] == "int8"
    for a in arts.values():
        assert a["verification"]["status"] == "passed" and a["input"]["dtype"] in ("float32", "uint8")
    fp32 = arts["fp32"]["verification"]
    assert fp32["accuracy"] == pytest.approx(fp32["keras_accuracy"], abs=1e-9)
    assert fp32["agreement"] == 1.0


@pytest.fixture(scope="module")
def legacy_mixed_run(small_run, tmp_path_factory):
    """A run whose model.keras was saved computing in bfloat16 (as runs were before the trainer
    saved float32): the small run's weights in the same network built under mixed_bfloat16."""
    code = (
        "import sys, keras\n"
        "from trainer.backbones import get_backbone\n"
        "from trainer.evaluate import load_run_model\n"
        "from trainer.model import build, training_precision\n"
        "src, dst, w = sys.argv[1:4]\n"
        "float_model = load_run_model(src)\n"
        "keras.mixed_precision.set_global_policy('mixed_bfloat16')\n"
        "parts = build(get_backbone('mobilenet_v2'), 96, 0.35, w, 3)\n"
        "parts.model.set_weights(float_model.get_weights())\n"
        "assert training_precision(parts.model) == 'mixed_bfloat16'\n"
        "parts.model.save(dst)\n")
    run = tmp_path_factory.mktemp("legacy_mixed") / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("cache", "deploy"))
    (run / R.MODEL).unlink()
    r = subprocess.run([sys.executable, "-c", code, str(small_run), str(run / R.MODEL), str(W035)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_a_run_saved_in_bfloat16_converts_and_verifies(legacy_mixed_run):
    r = run_cli("edgetl", "convert", legacy_mixed_run, "--fp32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) <= 3       # no MLIR dump
    v = json.loads((legacy_mixed_run / "deploy" / "manifest.json").read_text())["artifacts"][0]["verification"]
    assert v["status"] == "passed" and v["agreement"] == 1.0


def test_eval_explain_and_compare_read_a_run_saved_in_bfloat16(legacy_mixed_run, small_run, synth_data, tmp_path):
    before = R.read_json(legacy_mixed_run / R.METRICS)["test"]["accuracy"]
    r = run_cli("edgetl", "eval", legacy_mixed_run)
    assert r.returncode == 0, r.stderr[-3000:]
    after = R.read_json(legacy_mixed_run / R.METRICS)["test"]
    assert abs(after["accuracy"] - before) <= 1 / after["n"] + 1e-9
    r = run_cli("edgetl", "explain", legacy_mixed_run, next((synth_data / "dotted").iterdir()))
    assert r.returncode == 0 and "Grad-CAM of" in r.stdout, r.stderr[-3000:]
    r = run_cli("edgetl", "runs", "compare", small_run, legacy_mixed_run, "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert any((tmp_path / "cmp").iterdir())


# A layer whose op (MatrixDeterminant) has no TFLite builtin kernel: the converter must reject it.
DET_LAYER = '''
import keras

@keras.saving.register_keras_serializable("edgetl_test")
class Det(keras.layers.Layer):
    def call(self, x):
        return x + keras.ops.expand_dims(keras.ops.det(keras.ops.reshape(x[:, :1], (-1, 1, 1))), -1)
'''


def test_a_converter_failure_is_one_line_naming_the_op_and_layer(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("cache", "deploy"))
    (tmp_path / "det_layer.py").write_text(DET_LAYER)
    make = ("import sys, keras; sys.path.insert(0, sys.argv[2]); import det_layer\n"
            "from trainer.evaluate import load_run_model\n"
            "m = load_run_model(sys.argv[1])\n"
            "keras.Model(m.inputs, det_layer.Det(name='determinant')(m.outputs[0])).save(sys.argv[1] + '/model.keras')\n")
    r = subprocess.run([sys.executable, "-c", make, str(run), str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    # the edgetl console script, in a process that knows the custom layer
    cli = ("import sys; from edge_runtime.quiet import enable; enable()   # as main() does first\n"
           "sys.path.insert(0, sys.argv.pop(1)); import det_layer\n"
           "from edgetl.cli import main; sys.argv[0] = 'edgetl'; main()\n")
    user_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}   # as a user's shell
    r = subprocess.run([sys.executable, "-c", cli, str(tmp_path), "convert", str(run), "--fp32"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=user_env)
    assert r.returncode != 0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines[:5]
    assert "MatrixDeterminant" in lines[0] and "layer determinant" in lines[0] and "deploy.log" in lines[0]
    assert "neither a custom op nor a flex op" in (run / "deploy.log").read_text()
    assert not (run / "deploy").exists()


def test_float32_copy_of_a_mixed_model_keeps_weights_and_outputs():
    import keras

    from trainer.model import as_float32, training_precision

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3)(inp)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Softmax(dtype="float32")(keras.layers.Dense(3)(x))
        mixed = keras.Model(inp, out)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    f32 = as_float32(mixed)
    assert training_precision(mixed) == "mixed_bfloat16" and training_precision(f32) == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), f32.get_weights()))
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    assert np.abs(np.asarray(mixed(x)) - np.asarray(f32(x))).max() < 0.05   # bf16 rounding only
    assert as_float32(f32) is f32
