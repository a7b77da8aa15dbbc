"""EfficientNet-Lite: architecture, the torch-free .pth importer, ImageNet predictions, transfer."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from conftest import ASSETS, SAMPLES, run_cli

from trainer.backbones import efficientnet_lite as lite
from trainer.backbones.pth import MAGIC, PROTOCOL_VERSION, PthError, read_state_dict

LABELS = ASSETS / "labels" / "imagenet_class_index.json"
KEYS = ASSETS / "weights" / "efficientnet_lite0_pth_keys.txt"


@pytest.fixture(scope="module")
def pth():
    return lite.checkpoint(0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_importer_reads_every_published_key_with_its_shape(pth):
    sd = read_state_dict(pth, sha256=lite.PACKAGES[0][1])
    listed = {}
    for line in KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            listed[key] = (eval(shape), dtype)  # noqa: S307  (shape tuples from the asset listing)
    assert {k: (v.shape, str(v.dtype)) for k, v in sd.items()} == listed


@pytest.mark.parametrize("variant,published", [(0, 4.7), (1, 5.4), (2, 6.1), (3, 8.2), (4, 13.0)])
def test_parameter_count_matches_published(variant, published):
    m = lite.efficientnet_lite(variant, include_top=True)
    assert abs(m.count_params() / 1e6 - published) / published < 0.03


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_command_names_the_sample_photos(cache, variant):
    """Each installed checkpoint, imported without torch, is ImageNet's own classifier."""
    r = run_cli("edgetl", "imagenet", *sorted(SAMPLES.glob("*.jpg")), "--backbone", f"efficientnet_lite{variant}",
                "--labels", LABELS, "--json", env={"EDGETL_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    top1 = {json.loads(ln)["file"].rsplit("/", 1)[1]: json.loads(ln)["top_k"][0]["label"]
            for ln in r.stdout.splitlines()}
    assert top1["hot_dog.jpg"] == "hotdog"
    assert top1["parrot.jpg"] == "macaw"
    assert top1["daisy.jpg"] == "daisy"
    assert top1["cat.jpg"] in {"tabby", "tiger_cat", "Egyptian_cat"}
    idx = json.loads(LABELS.read_text())
    dogs = {idx[str(i)][1] for i in range(151, 269)}  # ImageNet's dog breeds
    assert top1["dog.jpg"] in dogs


def test_converted_weights_are_cached_and_reused(cache, monkeypatch):
    import keras
    keras.utils.clear_session()
    m1 = lite.efficientnet_lite(0, 96)
    lite.load_weights(m1, 0, "imagenet")
    cached = list((cache / "weights").glob("efficientnet_lite0_imagenet_*.npz"))
    assert len(cached) == 1

    def no_reimport(*a, **k):
        raise AssertionError("the .pth was read again despite the cache")
    monkeypatch.setattr("trainer.backbones.pth.read_state_dict", no_reimport)
    m2 = lite.efficientnet_lite(0, 96)
    lite.load_weights(m2, 0, "imagenet")
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tampered_checkpoint_is_refused(pth, tmp_path):
    bad = tmp_path / "tampered.pth"
    data = bytearray(pth.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(PthError, match="sha256"):
        read_state_dict(bad, sha256=lite.PACKAGES[0][1])


def test_truncated_checkpoint_is_refused(pth, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(pth.read_bytes()[:-1000])
    with pytest.raises(PthError, match="truncated"):
        read_state_dict(bad)               # even without the sha256 the structure check catches it


def _legacy_file(obj_pickle: bytes) -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, PROTOCOL_VERSION, {"little_endian": True}))
    return head + obj_pickle + pickle.dumps([], protocol=2)


def test_pickle_naming_other_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))
    bad = tmp_path / "evil.pth"
    bad.write_bytes(_legacy_file(pickle.dumps({"w": Evil()}, protocol=2)))
    with pytest.raises(PthError, match="system"):
        read_state_dict(bad)
    assert not marker.exists()


def test_non_state_dict_is_refused(tmp_path):
    bad = tmp_path / "list.pth"
    bad.write_bytes(_legacy_file(pickle.dumps([1, 2, 3], protocol=2)))
    with pytest.raises(PthError, match="not a state_dict"):
        read_state_dict(bad)


def test_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "text.pth"
    bad.write_bytes(b"hello, this is not a checkpoint\n")
    with pytest.raises(PthError):
        read_state_dict(bad)


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_larger_lites_train_a_step_and_export(variant, tmp_path):
    """Random init (at 64 px, quick): one optimiser step, then a .tflite that agrees."""
    import keras

    from converter.convert import tflite_bytes
    from edge_runtime.interpreter import load_interpreter
    from trainer.backbones import get_backbone
    from trainer.model import build

    keras.utils.set_random_seed(0)
    parts = build(get_backbone(f"efficientnet_lite{variant}"), 64, 1.0, "none", num_classes=3)
    parts.base.trainable = True
    # eager: one step of a 13M-parameter graph costs ~3 s eagerly vs ~55 s to trace it on this CPU
    parts.model.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    before = [w.copy() for w in parts.model.get_weights()]
    parts.model.fit(x, np.array([0, 1, 2, 0]), epochs=1, batch_size=4, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, parts.model.get_weights()))

    path = tmp_path / f"lite{variant}.tflite"
    path.write_bytes(tflite_bytes(parts.model, "fp32"))
    interp = load_interpreter(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], x[:1])
    interp.invoke()
    np.testing.assert_allclose(interp.get_tensor(out["index"])[0], parts.model.predict(x[:1], verbose=0)[0],
                               atol=1e-4)


def test_lite0_trains_with_nothing_outside_the_installed_packages(synth_data, tmp_path, cache):
    shutil.rmtree(cache, ignore_errors=True)
    r = run_cli("edgetl", "train", synth_data, "--out", tmp_path / "run", "--backbone", "efficientnet_lite0",
                "--size", "96", "--epochs", "20", env={"EDGETL_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["backbone"]["name"] == "efficientnet_lite0" and cfg["train"]["weights"] == "imagenet"
    acc = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["accuracy"]
    assert acc > 0.8   # synthetic textures: ImageNet features separate them; random ones would not


def test_lite3_imagenet_weights_explain_how_to_get_them(synth_data, tmp_path):
    r = run_cli("edgetl", "train", synth_data, "--out", tmp_path / "run", "--backbone", "efficientnet_lite3")
    assert r.returncode != 0
    assert "efficientnet_lite3" in r.stderr and "--weights" in r.stderr
    assert not (tmp_path / "run").exists()
