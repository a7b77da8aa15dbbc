"""The trainer on both Keras backends, data-parallel on split CPUs, and multi-worker on loopback.

The GPU box has JAX but no TensorFlow: a run trained on `--backend jax` must need no TensorFlow
and convert under TensorFlow like any other. Multi-worker training is proven with two real
worker processes talking over loopback, as two machines would over a network.
"""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FLOWERS, ROOT, WEIGHTS, copy_subset, run_cli
from trainer.runs import rundir as R

W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
SMALL = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", W035]
# MobileNetV2 0.35@128 on 160 flowers per class; 40 % held out for test (320 photos: one is 0.3 points)
FLOWERS_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "128", "--weights", W035,
                "--fractions", "0.5,0.1,0.4", "--seed", "0", "--fine-tune", "--fine-tune-epochs", "2",
                "--fine-tune-blocks", "2"]


@pytest.fixture(scope="module")
def flowers_subset(tmp_path_factory):
    return copy_subset(FLOWERS, tmp_path_factory.mktemp("flowers") / "flowers5", per_class=160)


@pytest.fixture(scope="module")
def backend_runs(flowers_subset, tmp_path_factory):
    """The same run on TensorFlow and on JAX."""
    root = tmp_path_factory.mktemp("backends")
    out = {}
    for backend in ("tensorflow", "jax"):
        r = run_cli("edgetl", "train", flowers_subset, "--out", root / backend, *FLOWERS_ARGS, "--backend", backend)
        assert r.returncode == 0, r.stderr[-3000:]
        out[backend] = (root / backend, r.stderr)
    return out


def _test_accuracy(run):
    return R.read_json(run / R.METRICS)["test"]["accuracy"]


def test_tensorflow_and_jax_runs_reach_the_same_accuracy(backend_runs):
    tf_acc, jax_acc = (_test_accuracy(backend_runs[b][0]) for b in ("tensorflow", "jax"))
    assert abs(tf_acc - jax_acc) <= 0.02 + 1e-9, (tf_acc, jax_acc)
    assert min(tf_acc, jax_acc) >= 0.8
    for b in ("tensorflow", "jax"):
        hist = R.read_json(backend_runs[b][0] / R.HISTORY)
        assert len(hist["fine_tune"]["loss"]) == 2      # both phases ran on both backends


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_train_states_backend_devices_replicas_precision_and_jit_first(backend_runs, backend):
    run, stderr = backend_runs[backend]
    hw = R.read_json(run / R.CONFIG)["hardware"]
    assert hw["backend"] == backend and hw["replicas"] == 1 and hw["precision_policy"] == "float32"
    assert hw["jit_compile"] is (backend == "jax")     # XLA on CPU only where it is the fast path
    assert hw["devices"]
    first = next(line for line in stderr.splitlines() if line.startswith("backend "))
    assert first == (f"backend {backend}, devices [{', '.join(hw['devices'])}], default x1 replica(s), "
                     f"precision float32, jit {'on' if backend == 'jax' else 'off'}")
    assert R.read_json(run / R.CONFIG)["train"]["backend"] == backend


def test_a_jax_run_converts_under_tensorflow_and_verifies(backend_runs):
    run = backend_runs["jax"][0]
    r = run_cli("edgetl", "convert", run, "--fp32", "--int8")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run / "deploy" / "manifest.json").read_text())
    arts = {a["precision"]: a for a in m["artifacts"]}
    assert set(arts) == {"fp32", "int8"}
    keras_acc = _test_accuracy(run)   # the JAX-trained model, scored at the end of training
    for precision, a in arts.items():
        v = a["verification"]
        assert v["status"] == "passed" and v["split"] == "test" and v["n"] == 320, precision
        assert v["keras_accuracy"] == pytest.approx(keras_acc, abs=1e-6)   # TensorFlow reads it alike
    assert arts["fp32"]["verification"]["accuracy"] == pytest.approx(keras_acc, abs=1e-6)
    assert arts["int8"]["verification"]["accuracy"] >= keras_acc - 0.02
    assert m["default"] == "int8"


def test_jax_training_loads_no_tensorflow(synth_data, tmp_path):
    """Through the Python API, in a process of its own: Keras binds its backend at import."""
    code = (
        "import sys\n"
        "from trainer.config import TrainConfig\n"
        "from trainer.train import train\n"
        f"m = train(TrainConfig(data={str(synth_data)!r}, out={str(tmp_path / 'run')!r}, backbone='mobilenet_v2',"
        f" alpha=0.35, size=96, weights={str(W035)!r}, fine_tune=True, fine_tune_epochs=1, backend='jax'))\n"
        "import keras\n"
        "print(keras.backend.backend(), m['test']['accuracy'],"
        " sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'tensorflow_hub', 'tensorflow_datasets')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    backend, acc, loaded = r.stdout.strip().splitlines()[-1].split(" ", 2)
    assert backend == "jax" and float(acc) >= 0.8
    assert loaded == "[]"


def test_python_api_refuses_a_second_backend_in_one_process(synth_data, tmp_path):
    code = ("import keras\n"   # binds Keras to TensorFlow, its configured backend here
            "from trainer.config import TrainConfig\nfrom trainer.train import train\n"
            f"train(TrainConfig(data={str(synth_data)!r}, out={str(tmp_path / 'r')!r}, backend='jax'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={"KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    assert "Keras already runs on tensorflow in this process; start a new process with KERAS_BACKEND=jax" in r.stderr
    assert not (tmp_path / "r").exists()


def test_jax_data_parallel_over_two_cpu_devices(synth_data, tmp_path):
    out = tmp_path / "dp"
    r = run_cli("edgetl", "train", synth_data, "--out", out, *SMALL, "--backend", "jax", "--strategy", "mirrored",
                "--fine-tune", "--fine-tune-epochs", "1", "--fine-tune-blocks", "1", env={"EDGETL_LOGICAL_CPUS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    hw = R.read_json(out / R.CONFIG)["hardware"]
    assert (hw["backend"], hw["strategy"], hw["replicas"], hw["devices"]) == ("jax", "mirrored", 2, ["cpu:0", "cpu:1"])
    assert R.read_json(out / R.METRICS)["test"]["accuracy"] >= 0.8


# ------------------------------------------------------------------------- multi-worker
def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _weights(run):
    import zipfile

    import h5py
    with zipfile.ZipFile(run / R.MODEL) as z, z.open("model.weights.h5") as f, h5py.File(f) as h:
        out = []
        h.visititems(lambda name, obj: out.append((name, np.array(obj))) if isinstance(obj, h5py.Dataset) else None)
        return dict(out)


def test_two_workers_on_loopback_train_one_model(synth_data, tmp_path):
    args = [*SMALL, "--fine-tune", "--fine-tune-epochs", "2", "--fine-tune-blocks", "2", "--backend", "tensorflow"]
    single = tmp_path / "single"
    r = run_cli("edgetl", "train", synth_data, "--out", single, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(__import__("os").environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edgetl.cli", "train", str(synth_data), "--out", str(tmp_path / f"worker{i}"),
             *map(str, args), "--strategy", "multiworker"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    hw = [R.read_json(tmp_path / f"worker{i}" / R.CONFIG)["hardware"] for i in range(2)]
    assert all((h["strategy"], h["replicas"], h["processes"]) == ("multiworker", 2, 2) for h in hw)
    # one model: every weight the same in both workers' runs
    w0, w1 = _weights(tmp_path / "worker0"), _weights(tmp_path / "worker1")
    assert w0.keys() == w1.keys() and len(w0) > 100
    assert all(np.allclose(w0[k], w1[k], atol=1e-6) for k in w0)
    # ... and as good as the single-process run
    acc = [_test_accuracy(tmp_path / f"worker{i}") for i in range(2)]
    assert acc[0] == acc[1]
    assert abs(acc[0] - _test_accuracy(single)) <= 0.12   # 9 test images: one is 0.11
    assert len(R.read_json(tmp_path / "worker0" / R.HISTORY)["fine_tune"]["loss"]) == 2


@pytest.mark.parametrize("backend, env, message", [
    ("tensorflow", {"TF_CONFIG": ""}, "--strategy multiworker needs TF_CONFIG describing the cluster"),
    ("jax", {}, "--strategy multiworker runs on TensorFlow only for now"),
])
def test_multiworker_without_a_cluster_is_one_clear_error(synth_data, tmp_path, backend, env, message):
    r = run_cli("edgetl", "train", synth_data, "--out", tmp_path / "r", *SMALL, "--backend", backend,
                "--strategy", "multiworker", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
