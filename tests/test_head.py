"""The default head: an exact L-BFGS linear probe, L2 chosen on held-out data, refit on train+val;
never reading the test split (neither here nor in int8 recovery)."""
import shutil

import numpy as np
import pytest

from converter.head_refit import GRID
from tests.conftest import WEIGHTS, run_cli
from trainer.linear import LinearModel, fit, solve_head
from trainer.runs import rundir as R

W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"


def _blobs(n_per_class=150, d=40, k=4, seed=0, sep=1.2):
    """A fixed, overlapping Gaussian problem: linear, but not separable (accuracy well below 1)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, sep, (k, d))
    X = np.concatenate([rng.normal(means[c], 1.5, (n_per_class, d)) for c in range(k)])
    y = np.repeat(np.arange(k), n_per_class)
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


def _reference_logistic(X, y, k, l2, steps=4000, lr=0.5):
    """Plain full-batch gradient descent on the same objective (mean cross-entropy + l2/2 |W|^2),
    written independently of trainer.linear."""
    mu, s = X.mean(0), X.std()
    Z = (X - mu) / s
    W, b = np.zeros((Z.shape[1], k)), np.zeros(k)
    Y = np.eye(k)[y]
    for _ in range(steps):
        logits = Z @ W + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - Y) / len(y)
        W -= lr * (Z.T @ g + l2 * W)
        b -= lr * g.sum(0)
    return LinearModel(W=W / s, b=b - (mu / s) @ W)


def test_solver_matches_an_independent_reference_fit():
    X, y = _blobs(sep=0.35)
    Xtr, ytr, Xte, yte = X[:400], y[:400], X[400:], y[400:]
    l2 = 1e-2
    from trainer.linear import _split_theta, _Standardiser
    std = _Standardiser(Xtr)
    theta, _ = fit(std(Xtr), ytr, 4, l2)
    ours = std.fold(*_split_theta(theta, Xtr.shape[1], 4))
    ref = _reference_logistic(Xtr, ytr, 4, l2)
    acc = lambda m: float((m.scores(Xte).argmax(1) == yte).mean())
    assert 0.5 < acc(ref) < 0.98                      # a problem where the fit matters
    assert abs(acc(ours) - acc(ref)) <= 0.005
    np.testing.assert_allclose(ours.scores(Xte), ref.scores(Xte), atol=2e-2)


def test_l2_is_chosen_on_held_out_data_and_refit_uses_every_labelled_image():
    X, y = _blobs(n_per_class=200)
    Xtr, ytr, Xv, yv = X[:600], y[:600], X[600:], y[600:]
    train_only, final, sel = solve_head(Xtr, ytr, Xv, yv, 4, method="validation")
    assert sel.method == "validation" and sel.refit and sel.n_fit == 800
    best = max(sel.val_accuracy)
    assert sel.val_accuracy[sel.grid.index(sel.l2)] == best
    assert not np.allclose(train_only.W, final.W)
    # a small validation split is not trusted alone: k-fold over train+val decides
    _, _, sel_small = solve_head(Xtr, ytr, Xv[:60], yv[:60], 4)
    assert sel_small.method == "k-fold" and sel_small.folds == 5


def test_solver_is_deterministic_and_records_its_time_on_4000_vectors():
    import time
    rng = np.random.default_rng(3)
    means = rng.normal(0, 0.4, (5, 1280))
    y = np.repeat(np.arange(5), 800)
    X = np.maximum(rng.normal(means[y], 1.0), 0).astype(np.float32)  # ReLU-like pooled features
    t = time.time()
    a = solve_head(X[:3600], y[:3600], X[3600:], y[3600:], 5, method="validation")
    elapsed = time.time() - t
    b = solve_head(X[:3600], y[:3600], X[3600:], y[3600:], 5, method="validation")
    np.testing.assert_array_equal(a[1].W, b[1].W)
    assert a[2].seconds == pytest.approx(elapsed, abs=1.0)  # the recorded time is the real one


def _presplit(src, dst, poison=False):
    """Copy a folder-per-class dataset into train/val/test folders (fixed by file order); with
    ``poison`` the test images are moved into the wrong class folders."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    for ci, c in enumerate(classes):
        files = sorted((src / c).iterdir())
        parts = {"train": files[:18], "val": files[18:24], "test": files[24:30]}
        for part, fs in parts.items():
            label = classes[(ci + 1) % len(classes)] if (poison and part == "test") else c
            (dst / part / label).mkdir(parents=True, exist_ok=True)
            for f in fs:
                shutil.copy2(f, dst / part / label / f.name)
    return dst


@pytest.mark.slow
def test_poisoned_test_labels_change_nothing_that_is_chosen(synth_data, tmp_path):
    """Selection (head L2, refit) and int8 recovery never read the test split: scrambling its
    labels changes the reported test accuracy and nothing else."""
    heads, choices, accs = [], [], []
    for poison in (False, True):
        data = _presplit(synth_data, tmp_path / f"data{int(poison)}", poison)
        run = tmp_path / f"run{int(poison)}"
        r = run_cli("edgetl", "train", data, "--out", run, "--backbone", "mobilenet_v2", "--alpha", "0.35",
                    "--size", "96", "--weights", W035)
        assert r.returncode == 0, r.stderr[-2000:]
        r = run_cli("edgetl", "convert", run, "--int8")
        assert r.returncode == 0, r.stderr[-2000:]
        m = R.read_json(run / R.METRICS)
        heads.append({k: v for k, v in m["head"].items() if k != "seconds"})
        q = next(a for a in R.read_json(run / "deploy" / "manifest.json")["artifacts"]
                 if a["precision"] == "int8")["quantization"]
        choices.append({k: q[k] for k in ("plain", "chosen", "float_layers", "tried", "head_refit")})
        accs.append(m["test"]["accuracy"])
    assert heads[0] == heads[1]
    assert choices[0] == choices[1]
    assert accs[0] != accs[1]                 # the poison did reach the test split


@pytest.mark.slow
def test_convert_records_int8_recovery_and_per_layer_error(deployed):
    m = R.read_json(deployed / "manifest.json")
    q = next(a for a in m["artifacts"] if a["precision"] == "int8")["quantization"]
    assert q["val_n"] > 0 and 0 <= q["plain"]["agreement"] <= 1
    assert q["worst_layers"] and all(l["rmse_over_scale"] >= 0 for l in q["worst_layers"])
    errs = [l["rmse_over_scale"] for l in q["worst_layers"]]
    assert errs == sorted(errs, reverse=True)
    assert q["chosen"]["agreement"] >= q["plain"]["agreement"]
    assert "plain_int8" in q["latency_ms"]


@pytest.mark.slow
def test_convert_records_the_head_refit_and_keeps_it_only_when_validation_gains(deployed):
    m = R.read_json(deployed / "manifest.json")
    a = next(a for a in m["artifacts"] if a["precision"] == "int8")
    refit = a["quantization"]["head_refit"]
    assert refit["fit_images"] == m["calibration"]["samples"]
    assert [g["l2"] for g in refit["grid"]] == list(GRID) and all(g["kl"] >= 0 for g in refit["grid"])
    best = min(refit["grid"], key=lambda g: g["kl"])
    gains = best["kl"] < refit["before"]["kl"] and best["agreement"] >= refit["before"]["agreement"]
    assert refit["kept"] == gains and refit["l2"] == (best["l2"] if gains else None)


@pytest.mark.slow
def test_a_refit_head_keeps_its_train_only_twin_beside_the_model(small_run):
    """The refit head has trained on the validation images; the run keeps the head fit on train
    alone (what the solver chose before the refit) for int8 recovery to measure against."""
    from trainer.data.split import Split
    from trainer.evaluate import load_run_model
    from trainer.model import logits_layer

    sel = R.read_json(small_run / R.METRICS)["head"]
    assert sel["refit"]
    with np.load(small_run / R.HELDOUT_HEAD) as z:
        W, b = z["W"], z["b"]
    shipped_W, _ = logits_layer(load_run_model(small_run)).get_weights()
    assert W.shape == shipped_W.shape and not np.allclose(W, shipped_W)
    split = Split.of_run(small_run)
    F = {s: np.load(next((small_run / R.CACHE).glob(f"features_{s}_*.npy"))) for s in ("train", "val")}
    train_only, _, again = solve_head(F["train"], split.paths_labels("train")[1], F["val"],
                                      split.paths_labels("val")[1], W.shape[1])
    assert again.l2 == sel["l2"]
    np.testing.assert_allclose(W, train_only.W, atol=1e-5)
    np.testing.assert_allclose(b, train_only.b, atol=1e-5)


def test_a_head_that_never_saw_validation_leaves_no_twin(tmp_path):
    """Trained on train only (no refit, the SGD head, fine-tuning), the model is its own held-out
    version: a twin left by an earlier training of the run would describe another head."""
    from trainer.train import _save_heldout_head

    _save_heldout_head(tmp_path, LinearModel(W=np.ones((4, 2), np.float32), b=np.zeros(2, np.float32)), 2.0)
    with np.load(tmp_path / R.HELDOUT_HEAD) as z:
        assert (z["W"] == 2).all()       # an SVM head's temperature is part of the head
    _save_heldout_head(tmp_path, None)
    assert not (tmp_path / R.HELDOUT_HEAD).exists()


@pytest.mark.slow
def test_recovery_measures_on_the_twin_and_returns_the_model_to_ship(small_run, tmp_path):
    """A twin whose head names the classes in reverse order: recovery's agreement is measured
    against the twin's own float predictions, and the model it returns is the shipped one."""
    from converter.calibration import representative_dataset
    from converter.convert import _converter, _predict, export_saved_model, head_weights, reference
    from converter.int8 import quantize_with_recovery
    from edge_runtime.classifier import Classifier
    from trainer.data.pipeline import load_arrays
    from trainer.data.split import Split
    from trainer.evaluate import load_run_model
    from trainer.model import logits_layer

    model = load_run_model(small_run)
    shipped = [w.copy() for w in logits_layer(model).get_weights()]
    twin = (shipped[0][:, ::-1].copy(), shipped[1][::-1].copy())
    split, labels, method = Split.of_run(small_run), R.read_labels(small_run), R.read_resize(small_run)
    size = int(model.inputs[0].shape[1])
    ref = reference(model, split, size, method, need_val=True, heldout=twin)
    assert (ref.val_ref != _predict(model, ref.x_val)).mean() > 0.3          # the twin's predictions
    assert all(np.array_equal(a, b) for a, b in zip(logits_layer(model).get_weights(), shipped))
    export_saved_model(model, tmp_path / "ship")
    with head_weights(model, twin):
        export_saved_model(model, tmp_path / "twin")
    calib = representative_dataset(load_arrays(split.paths_labels("train")[0][:20], size, method))
    blob, choice = quantize_with_recovery(_converter(tmp_path / "twin", "int8", "uint8", calib), "uint8",
                                          ref.x_val, ref.val_y, ref.val_ref, labels,
                                          ship_converter=_converter(tmp_path / "ship", "int8", "uint8", calib))
    assert choice.measured_on == "held-out twin" and choice.plain["agreement"] >= 0.8
    (tmp_path / "m.tflite").write_bytes(blob)
    top1 = Classifier(tmp_path / "m.tflite", labels=labels).top1(ref.x_test)
    assert (top1 == ref.keras_pred).mean() >= 0.8


@pytest.mark.slow
def test_convert_says_recovery_was_measured_on_the_held_out_twin(deployed):
    q = next(a for a in R.read_json(deployed / "manifest.json")["artifacts"]
             if a["precision"] == "int8")["quantization"]
    assert q["measured_on"] == "held-out twin"
