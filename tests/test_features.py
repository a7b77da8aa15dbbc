"""Frozen features on the fastest engine that gives the same numbers (LiteRT on a CPU), written
to disk in chunks, memory-mapped, resumable, and near-duplicate search that scales."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import FLOWERS, ROOT, WEIGHTS, run_cli
from trainer import features as FE
from trainer.runs import rundir as R

W10 = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
IDENTITY = {"backbone": "mobilenet_v2", "alpha": 1.0, "size": 224, "preprocessing": "mobilenet"}


def _parts(alpha=1.0, size=224, weights=W10):
    from trainer.backbones import get_backbone
    from trainer.model import build
    return build(get_backbone("mobilenet_v2"), size, alpha, str(weights), 5)


def _flower_paths(per_class):
    classes = sorted(p for p in FLOWERS.iterdir() if p.is_dir())
    return [str(f) for c in classes for f in sorted(c.iterdir())[:per_class]]


def test_litert_features_equal_keras_features_on_100_real_photos():
    from trainer.data.pipeline import load_arrays

    parts = _parts()
    path, _, _ = FE.converted_extractor(parts.features, IDENTITY)
    x = load_arrays(_flower_paths(20), 224)
    assert len(x) == 100
    keras_f = parts.features.predict(x.astype(np.float32), verbose=0)
    lite_f = FE.LiteRTExtractor(path, 2)(x)
    diff = FE.relative_difference(lite_f, keras_f)
    assert diff <= 1e-4, diff
    assert diff > 0          # two engines really ran (bit-equal output would mean one of them twice)


def test_extractor_is_converted_once_and_keyed_by_its_weights():
    parts = _parts(0.35, 96, W035)
    ident = dict(IDENTITY, alpha=0.35, size=96)
    first, _, _ = FE.converted_extractor(parts.features, ident)
    again, cached, secs = FE.converted_extractor(parts.features, ident)
    assert again == first and cached and secs == 0.0
    w = parts.features.get_weights()
    w[0] = w[0] + 1e-3
    parts.features.set_weights(w)
    other, cached, _ = FE.converted_extractor(parts.features, ident)
    assert other != first and not cached


def test_litert_is_refused_for_keras_when_it_differs_beyond_the_tolerance(tmp_path, monkeypatch):
    parts = _parts(0.35, 96, W035)
    ident = dict(IDENTITY, alpha=0.35, size=96)
    monkeypatch.setattr(FE, "TOLERANCE", 0.0)
    e = FE.choose_engine(tmp_path, "auto", parts.features, ident, _flower_paths(2), 96, "bilinear")
    assert e.name == "keras" and "differ from Keras" in e.reason
    assert e.max_relative_difference > 0 and e.checked_images == 10
    assert json.loads((tmp_path / "cache" / FE.ENGINE_FILE).read_text())["name"] == "keras"  # recorded once


def test_a_run_on_a_cpu_uses_litert_records_the_check_and_converts_like_any_other(small_run, deployed):
    m = R.read_json(small_run / R.METRICS)
    assert m["features"]["name"] == "litert" and m["features"]["requested"] == "auto"
    assert m["features"]["checked_images"] == 16 and m["features"]["max_relative_difference"] <= 1e-4
    manifest = json.loads((deployed / "manifest.json").read_text())
    assert {a["precision"] for a in manifest["artifacts"]} == {"fp32", "int8"}
    assert all(a["verification"]["status"] == "passed" for a in manifest["artifacts"])


def test_frozen_test_scores_come_from_the_cached_features_and_match_the_model(small_run):
    """train scores the test split from its features (no second pass); `edgetl eval` runs the
    saved model on the images: the same predictions."""
    before = R.read_json(small_run / R.METRICS)["test"]
    probs_train = np.load(small_run / R.PREDICTIONS / "test.npz")["probs"]
    assert any(small_run.glob(f"{R.CACHE}/features_test_*.npy"))
    r = run_cli("edgetl", "eval", small_run)
    assert r.returncode == 0, r.stderr[-2000:]
    after = R.read_json(small_run / R.METRICS)["test"]
    probs_model = np.load(small_run / R.PREDICTIONS / "test.npz")["probs"]
    assert after["accuracy"] == before["accuracy"]
    np.testing.assert_allclose(probs_model, probs_train, atol=1e-4)


def _tiny_folder(tmp_path, per_class):
    from trainer.data.synthetic import generate
    return generate(tmp_path / "tiny", per_class=per_class, size=32, seed=5)


def test_features_of_thousands_of_images_are_on_disk_and_memory_mapped(tmp_path):
    from trainer.config import TrainConfig
    from trainer.train import train

    data = _tiny_folder(tmp_path, 700)
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(out), backbone="mobilenet_v2", alpha=0.35, size=32, weights=str(W035),
                      features="keras"))
    files = {p.name.split("_")[1]: p for p in (out / R.CACHE).glob("features_*.npy")}
    assert set(files) == {"train", "val", "test"}
    F = np.load(files["train"], mmap_mode="r")
    width = R.read_json(out / R.CONFIG)["backbone"]["feature_width"]   # 1280 final + the taps' widths
    assert isinstance(F, np.memmap) and F.shape == (1680, width) and F.dtype == np.float32
    assert not list((out / R.CACHE).glob("*.partial.npy"))     # renamed into place when complete


def test_the_head_solver_streams_large_feature_files_and_gets_the_same_head(tmp_path, monkeypatch):
    import trainer.linear as L

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 700)
    X = np.maximum(rng.normal(rng.normal(0, 0.5, (3, 64))[y], 1.0), 0).astype(np.float32)
    np.save(tmp_path / "tr.npy", X[:1800])
    np.save(tmp_path / "va.npy", X[1800:])
    Ftr, Fva = (np.load(tmp_path / f, mmap_mode="r") for f in ("tr.npy", "va.npy"))
    in_memory = L.solve_head(Ftr, y[:1800], Fva, y[1800:], 3, method="validation")
    seen = []
    real_read = L._read_rows
    monkeypatch.setattr(L, "_read_rows", lambda p, a, b: seen.append(b - a) or real_read(p, a, b))
    monkeypatch.setattr(L, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(L, "CHUNK_ROWS", 256)
    streamed = L.solve_head(Ftr, y[:1800], Fva, y[1800:], 3, method="validation")
    assert max(seen) == 256 and len(seen) > 100          # read a chunk at a time, pass after pass
    assert streamed[2].l2 == in_memory[2].l2
    np.testing.assert_allclose(streamed[1].W, in_memory[1].W, atol=1e-4)


def test_a_killed_extraction_resumes_at_the_first_chunk_not_written(tmp_path, monkeypatch):
    paths = [f"img{i}" for i in range(1000)]

    def compute(ps):
        calls.append(len(ps))
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt
        return np.array([[int(p[3:]), -int(p[3:])] for p in ps], np.float32)

    dest = tmp_path / "features_train_x.npy"
    calls, stop = [], True
    with pytest.raises(KeyboardInterrupt):
        FE.write_features(dest, paths, 2, compute, chunk=100)
    assert not dest.exists()
    calls, stop = [], False
    F = FE.write_features(dest, paths, 2, compute, chunk=100)
    assert sum(calls) == 800                         # the two finished chunks were not redone
    np.testing.assert_array_equal(F[:, 0], np.arange(1000))
    assert isinstance(F, np.memmap)


def test_the_next_splits_chunks_run_beside_the_last_chunk_of_the_split_before(tmp_path):
    """Splits share one queue: while one worker runs train's last chunk, the other starts on
    val instead of idling (the last train chunk waits for a val chunk to begin, up to 10 s)."""
    import threading

    val_started, waited = threading.Event(), []

    def compute(ps):
        if ps[0] == "train30":
            waited.append(val_started.wait(10))
        if ps[0].startswith("val"):
            val_started.set()
        return np.array([[int(p.removeprefix("train").removeprefix("val")), len(p)] for p in ps], np.float32)

    jobs = [(tmp_path / "features_train_x.npy", [f"train{i}" for i in range(40)], "features[train]"),
            (tmp_path / "features_val_x.npy", [f"val{i}" for i in range(20)], "features[val]")]
    F_train, F_val = FE.write_splits(jobs, 2, compute, workers=2, chunk=10)
    assert waited == [True]
    np.testing.assert_array_equal(F_train[:, 0], np.arange(40))
    np.testing.assert_array_equal(F_val[:, 0], np.arange(20))
    assert not list(tmp_path.glob("*.partial.npy")) and not list(tmp_path.glob("*.done.json"))


def test_every_split_is_cut_into_many_short_chunks_so_no_core_idles_long_at_its_end():
    for n in (1, 40, 406, 3242, 64000):
        c = FE.chunk_size(n)
        assert FE.MIN_CHUNK <= c <= FE.CHUNK and c == FE.chunk_size(n)       # same cut on resume
        assert -(-n // c) >= min(FE.CHUNKS_PER_SPLIT, -(-n // FE.MIN_CHUNK))
    assert FE.chunk_size(406) == 16 and FE.chunk_size(64000) == 256


@pytest.mark.slow
def test_resume_continues_a_run_killed_during_feature_extraction(tmp_path):
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "train", str(FLOWERS), "--out", str(out),
                          "--backbone", "mobilenet_v2", "--weights", str(W10)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not list((out / R.CACHE).glob("features_train_*.done.json")):
        time.sleep(0.1)
    assert p.poll() is None, "training ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = run_cli("edgetl", "train", "--resume", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "features[train]: resuming" in r.stderr and "images already computed" in r.stderr
    m = R.read_json(out / R.METRICS)
    assert m["test"]["accuracy"] >= 0.92 and m["features"]["name"] == "litert"


def test_near_duplicate_search_finds_exactly_the_pairs_a_full_comparison_finds():
    from trainer.data.duplicates import _popcount_rows, find_groups

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    hashes = list(base)
    for _ in range(200):   # near copies with 0..8 bits flipped: some within 6 bits, some not
        bits = np.unpackbits(base[rng.integers(0, 300)])
        bits[rng.choice(256, rng.integers(0, 9), replace=False)] ^= 1
        hashes.append(np.packbits(bits))
    h = np.stack(hashes)
    close = _popcount_rows(h[:, None, :] ^ h[None, :, :]) <= 6
    parent = list(range(len(h)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for a, b in zip(*np.nonzero(close)):
        parent[root(b)] = root(a)
    want = {}
    for i in range(len(h)):
        want.setdefault(root(i), []).append(i)
    want = sorted(sorted(m) for m in want.values() if len(m) > 1)
    got = sorted(g.members for g in find_groups(hashes))
    assert got == want and len(got) > 50


def test_progress_lines_give_rate_and_eta():
    from edge_runtime.log import Progress
    p = Progress("features[train]", 1000, unit="img")
    p._t0 -= 2.0
    p.done = 500
    line = p.line()
    assert line.startswith("features[train]: 500/1000 img (") and "img/s" in line and "ETA" in line


def test_progress_reaches_a_log_that_is_not_a_terminal(capsys):
    from edge_runtime.log import Progress
    p = Progress("calibrating", 3, unit="img", every=0.0)
    p.add()
    p.add()
    p.add()                     # the last step is not repeated: the step's own summary line follows
    p.finish()
    err = capsys.readouterr().err.splitlines()
    assert err == ["calibrating: 1/3 img (" + err[0].split("(", 1)[1], "calibrating: 2/3 img (" + err[1].split("(", 1)[1]]
