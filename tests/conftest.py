"""Shared fixtures. Real assets come from ../shared/assets (never copied into the repo)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
FLOWERS = ASSETS / "data" / "flowers5_kaggle227"
CATS_DOGS = ASSETS / "data" / "cats_and_dogs_filtered"
SAMPLES = ASSETS / "samples"
WEIGHTS = ASSETS / "weights"

if not ASSETS.is_dir():
    raise RuntimeError(f"{ASSETS} is missing: the tests read real photos and weights from ../shared/assets")

# Tests never wait on the network: TF Hub / TFDS / Keras downloads must fail fast and clearly.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Converted feature extractors (trainer.features) go to a cache of this test session, shared by
# its subprocesses, never the user's ~/.cache.
if "EDGETL_CACHE" not in os.environ:
    import tempfile
    os.environ["EDGETL_CACHE"] = tempfile.mkdtemp(prefix="edgetl-test-cache-")


# what only a fresh process can honour: the Keras backend and device layout are fixed at import
PROCESS_ONLY_ENV = ("KERAS_BACKEND", "EDGETL_LOGICAL_CPUS", "TF_CONFIG", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")
ENTRY_POINTS = {"edgetl": ("edgetl.cli", "cli"), "edge-predict": ("edge_runtime.cli", "cli")}


def run_cli(*args, env=None, timeout=600, cwd=None, process=False) -> subprocess.CompletedProcess:
    """Run a console entry point (`edgetl ...` / `edge-predict ...`) as a user would.

    In this test process through click's runner (TensorFlow is imported once, not once per call),
    unless ``process`` is set or ``env`` names something only a new process can take (the Keras
    backend): tests about what a process does (native log lines on fd 2, exit on a signal, a
    kill -9, the interpreter's exit) ask for one."""
    prog, *rest = args
    rest = [str(a) for a in rest]
    if process or any(k in PROCESS_ONLY_ENV for k in (env or {})) or _asks_for_jax(rest):
        module = ENTRY_POINTS[prog][0]
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, "-m", module, *rest], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)
    return _run_in_process(prog, rest, env or {}, Path(cwd or ROOT))


def _asks_for_jax(args: list[str]) -> bool:
    """`--backend jax`: Keras' backend is chosen once per process."""
    return "--backend=jax" in args or any(a == "--backend" and b == "jax" for a, b in zip(args, args[1:]))


def _run_in_process(prog: str, rest: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """One command run in this process, its global state put back afterwards (environment,
    working folder, argv, signal handlers, the once-per-process warnings, the quiet switch, the
    Keras precision policy and session) so the next call starts as a new process would."""
    import importlib
    import signal
    import traceback

    from click.testing import CliRunner

    from edge_runtime import log, quiet

    module, name = ENTRY_POINTS[prog]
    command = getattr(importlib.import_module(module), name)
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_quiet = (quiet._enabled, quiet._set_level, list(sys.meta_path))
    log._warned.clear()
    try:
        os.chdir(cwd)
        sys.argv = [prog, *rest]
        quiet.enable()
        result = CliRunner().invoke(command, rest, env={k: (v or None) for k, v in env.items()},
                                    prog_name=prog, catch_exceptions=True)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
        quiet._enabled, quiet._set_level, sys.meta_path[:] = saved_quiet
        log._warned.clear()
        _reset_keras()
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([prog, *rest], result.exit_code, result.stdout, stderr)


def _reset_keras() -> None:
    """A new process's Keras: float32 policy, no distribution, an empty session (memory back)."""
    if "keras" not in sys.modules:
        return
    import gc

    import keras

    keras.mixed_precision.set_global_policy("float32")
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
    keras.backend.clear_session()
    gc.collect()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A session fixture's folder, built by ``build(folder)`` once for the whole test run: with
    pytest-xdist the workers share it (the first builds it under a lock, the others wait and
    reuse it), so a trained run is trained once, not once per worker. Tests copy it to change it."""
    import fcntl
    import shutil

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)   # a half-built one from a failed build
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """The project's synthetic texture dataset: 3 classes x 30 photos, 96 px (fast fixture)."""
    from trainer.data.synthetic import generate

    folder = built_once(tmp_path_factory, "synth", lambda f: generate(f / "textures", per_class=30, size=96, seed=1))
    return folder / "textures"


def feature_run(tmp_path: Path, classes=("a", "b", "c"), counts=(("train", 60), ("val", 15)),
                spread: float = 3.0) -> Path:
    """A finished run's folder as the head benchmarks read it: labels, split lists and cached
    features (Gaussian classes around centres ``spread`` apart, 16 dimensions)."""
    import numpy as np

    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    (run / "split").mkdir(parents=True)
    (run / "cache").mkdir()
    (run / "labels.txt").write_text("\n".join(classes) + "\n")
    centres = rng.normal(0, spread, (len(classes), 16))
    for split, count in counts:
        names = [(f"{c}/{split}{i}.jpg", c) for c in classes for i in range(count)]
        (run / "split" / f"{split}.tsv").write_text(f"# root\t{tmp_path}\n" + "".join(f"{p}\t{c}\n" for p, c in names))
        X = np.stack([centres[classes.index(c)] + rng.normal(0, 1, 16) for _, c in names]).astype(np.float32)
        np.save(run / "cache" / f"features_{split}_0.npy", X)
    return run


def copy_subset(src: Path, dst: Path, per_class: int) -> Path:
    """A small real-photo dataset: the first ``per_class`` files of each class folder."""
    import shutil

    for cdir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cdir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cdir.iterdir())[:per_class]:
            shutil.copy2(f, dst / cdir.name / f.name)
    return dst


@pytest.fixture(scope="session")
def edge_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with only `pip install .[edge]`: what a device gets."""
    def build(folder: Path) -> None:
        venv = folder / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "-c", str(ROOT / "constraints.txt"), f"{ROOT}[edge]"],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr

    return built_once(tmp_path_factory, "edge", build) / "venv"


@pytest.fixture(scope="session")
def small_run(synth_data, tmp_path_factory) -> Path:
    """A trained run (MobileNetV2 0.35@96, real ImageNet weights, frozen head) for later stages."""
    def build(folder: Path) -> None:
        r = run_cli("edgetl", "train", synth_data, "--out", folder / "run", "--backbone", "mobilenet_v2",
                    "--alpha", "0.35", "--size", "96", "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5")
        assert r.returncode == 0, r.stderr[-3000:]
        r = run_cli("edgetl", "convert", folder / "run")
        assert r.returncode == 0, r.stderr[-3000:]

    return built_once(tmp_path_factory, "small_run", build) / "run"


@pytest.fixture(scope="session")
def deployed(small_run) -> Path:
    """The small run converted to fp32 + int8 (uint8 I/O)."""
    return small_run / "deploy"


@pytest.fixture(scope="session")
def flowers_deployed(tmp_path_factory) -> Path:
    """A flowers5 classifier (40 photos a class, MobileNetV2 0.35@96, real ImageNet weights),
    converted: a model that knows the sample daisy, for tests that show real class names."""
    def build(folder: Path) -> None:
        data = copy_subset(FLOWERS, folder / "flowers5", per_class=40)
        r = run_cli("edgetl", "train", data, "--out", folder / "run", "--backbone", "mobilenet_v2",
                    "--alpha", "0.35", "--size", "96", "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5")
        assert r.returncode == 0, r.stderr[-3000:]
        r = run_cli("edgetl", "convert", folder / "run")
        assert r.returncode == 0, r.stderr[-3000:]

    return built_once(tmp_path_factory, "flowers_run", build) / "run" / "deploy"
