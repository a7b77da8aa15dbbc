"""MobileNetV4-Conv in Keras against timm's own PyTorch graph, its checkpoint readers, and the
int8 path. The reference logits were computed once by timm (tests/reference/mobilenet_v4_timm.py)
from seeded weights in timm's key layout; the test rebuilds the same weights with numpy alone."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.reference.seeded_weights import seeded_input, seeded_state_dict

REFERENCE = ROOT / "tests" / "reference"
VARIANTS = ("small", "medium", "large")


@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_logits_equal_timms_own_on_seeded_weights(variant):
    import keras

    from trainer.backbones.mobilenet_v4 import assign, keras_arrays_from_timm, mobilenet_v4

    shapes = json.loads((REFERENCE / f"mobilenet_v4_conv_{variant}_keys.json").read_text())
    ref = np.load(REFERENCE / f"mobilenet_v4_conv_{variant}_logits.npz")
    sd = seeded_state_dict(shapes)
    keras.utils.clear_session()
    model = mobilenet_v4(variant, int(ref["size"]), include_top=True)
    arrays = keras_arrays_from_timm(sd, model)
    assign(model, arrays, variant)
    # every tensor of the checkpoint found its layer, and nothing else was needed
    assert sum(a.size for ws in arrays.values() for a in ws) == sum(a.size for a in sd.values())
    assert model.count_params() == sum(a.size for a in sd.values())
    logits = np.asarray(model(seeded_input(int(ref["size"])), training=False))
    assert np.abs(logits - ref["logits"]).max() <= 1e-4, np.abs(logits - ref["logits"]).max()


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, body = {}, b""
    for name, a in tensors.items():
        raw = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def test_the_safetensors_reader_gives_the_arrays_and_refuses_a_truncated_file(tmp_path):
    from trainer.backbones.safetensors import SafetensorsError, read_safetensors

    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.ones(4, np.float32)}
    good = tmp_path / "m.safetensors"
    good.write_bytes(_safetensors(tensors))
    back = read_safetensors(good)
    assert set(back) == set(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(SafetensorsError, match="truncated"):
        read_safetensors(bad)


def test_offline_imagenet_weights_name_the_file_to_fetch(synth_data, tmp_path):
    r = run_cli("edgetl", "train", synth_data, "--out", tmp_path / "run", "--backbone", "mobilenet_v4_conv_small",
                env={"EDGETL_CACHE": str(tmp_path / "cache")})
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and errors == [r.stderr.strip().splitlines()[-1]], r.stderr[-2000:]   # one, last
    assert "huggingface.co/timm/mobilenetv4_conv_small" in errors[0] and "--weights PATH" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_converts_to_int8_and_runs_fully_delegated(variant, synth_data, tmp_path):
    """Random init (no checkpoint offline) at 64 px: trained, converted to plain full int8 (what an
    NPU runs: no layer kept in float) and verified, its graph in one XNNPACK partition. A random
    model's int8 accuracy judges nothing, so the verification is recorded, not gated."""
    run = tmp_path / "run"
    r = run_cli("edgetl", "train", synth_data, "--out", run, "--backbone", f"mobilenet_v4_conv_{variant}",
                "--size", "64", "--weights", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("edgetl", "convert", run, "--int8", "--no-int8-recovery", "--max-drop", "100")
    assert r.returncode == 0, r.stderr[-3000:]
    int8 = next(a for a in json.loads((run / "deploy" / "manifest.json").read_text())["artifacts"]
                if a["precision"] == "int8")
    assert 0 <= int8["verification"]["accuracy"] <= 1 and 0 <= int8["verification"]["agreement"] <= 1
    # every op in XNNPACK but the step into the float probabilities at the end (converter._BY_DESIGN)
    assert set(int8["verification"]["not_delegated"]) <= {"QUANTIZE", "DEQUANTIZE", "SOFTMAX"}, int8["verification"]
