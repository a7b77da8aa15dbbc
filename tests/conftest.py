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


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run a console entry point (`edgetl ...` / `edge-predict ...`) as a user would."""
    prog, *rest = args
    module = {"edgetl": "edgetl.cli", "edge-predict": "edge_runtime.cli"}[prog]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, rest)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """The project's synthetic texture dataset: 3 classes x 30 photos, 96 px (fast fixture)."""
    from trainer.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "textures", per_class=30, size=96, seed=1)


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
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(ROOT / "constraints.txt"), f"{ROOT}[edge]"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


@pytest.fixture(scope="session")
def small_run(synth_data, tmp_path_factory) -> Path:
    """A trained run (MobileNetV2 0.35@96, real ImageNet weights, frozen head) for later stages."""
    out = tmp_path_factory.mktemp("small_run") / "run"
    r = run_cli("edgetl", "train", synth_data, "--out", out, "--backbone", "mobilenet_v2", "--alpha", "0.35",
                "--size", "96", "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def deployed(small_run) -> Path:
    """The small run converted to fp32 + int8 (uint8 I/O)."""
    r = run_cli("edgetl", "convert", small_run)
    assert r.returncode == 0, r.stderr[-3000:]
    return small_run / "deploy"
