"""Converter: artifacts, manifest, verification on the held-out split, safe writes, bad input."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_runtime.errors import UserError
from edge_runtime.manifest import sha256_file
from tests.conftest import ROOT, run_cli


def test_default_convert_writes_fp32_int8_labels_manifest(deployed):
    names = sorted(p.name for p in deployed.iterdir())
    assert names == ["labels.txt", "manifest.json", "model_fp32.tflite", "model_int8.tflite"]
    m = json.loads((deployed / "manifest.json").read_text())
    assert m["labels"] == ["dotted", "leopard", "striped"] and m["default"] == "int8"
    assert m["input"]["size"] == 96 and m["input"]["resize"] == "bilinear"
    for a in m["artifacts"]:
        assert a["sha256"] == sha256_file(deployed / a["file"]) and a["bytes"] > 0
    assert m["calibration"]["source"] == "train split" and m["calibration"]["random_noise"] is False
    assert sum(m["calibration"]["per_class"].values()) == m["calibration"]["samples"] > 0


def test_int8_is_full_integer_with_uint8_input_and_probabilities_out(deployed):
    m = json.loads((deployed / "manifest.json").read_text())
    a = next(a for a in m["artifacts"] if a["precision"] == "int8")
    assert a["input"]["dtype"] == "uint8" and a["output"]["dtype"] == "float32" and a["output"]["probabilities"]
    v = a["verification"]
    # the int8 body ends in one DEQUANTIZE; only the SOFTMAX runs in float (XNNPACK has no int8 one)
    assert v["float_ops"] == ["SOFTMAX"] and v["ops"]["SOFTMAX"] == v["ops"]["DEQUANTIZE"] == 1
    assert set(v["not_delegated"]) <= {"QUANTIZE"}  # only the uint8->int8 input conversion
    assert v["n"] == 9 and v["agreement"] >= 0.88 and v["drop_points"] <= 12


def test_int8_io_is_fully_delegated(small_run, tmp_path):
    r = run_cli("edgetl", "convert", small_run, "--int8", "--io", "int8", "--out", tmp_path / "d",
                "--calibration-samples", "30")
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((tmp_path / "d" / "manifest.json").read_text())["artifacts"][0]
    assert a["input"]["dtype"] == "int8" and a["verification"]["fully_delegated"] is True
    assert a["verification"]["delegate_partitions"] == 1


def test_reconverting_a_run_replaces_its_own_artifacts_without_force(small_run, tmp_path):
    out = tmp_path / "d"
    assert run_cli("edgetl", "convert", small_run, "--fp32", "--out", out).returncode == 0
    first = json.loads((out / "manifest.json").read_text())
    r = run_cli("edgetl", "convert", small_run, "--fp32", "--out", out)   # edgetl's own files: no --force
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((out / "manifest.json").read_text())
    assert again["model_fingerprint"] == first["model_fingerprint"] and again["created"] >= first["created"]


@pytest.mark.parametrize("case", ["missing", "no_model", "corrupt", "empty_labels", "no_calibration",
                                  "damaged_twin", "mismatched_twin"])
def test_bad_runs_give_one_line_errors(small_run, tmp_path, case):
    run = tmp_path / "run"
    if case != "missing":
        shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("deploy", "cache"))
        if case == "no_model":
            (run / "model.keras").unlink()
        elif case == "corrupt":
            (run / "model.keras").write_bytes(b"PK\x03\x04 not really a keras file")
        elif case == "empty_labels":
            (run / "labels.txt").write_text("")
        elif case == "damaged_twin":
            (run / "heldout_head.npz").write_bytes(b"PK\x03\x04 cut short")
        elif case == "mismatched_twin":
            np.savez(run / "heldout_head.npz", W=np.zeros((7, 2), np.float32), b=np.zeros(2, np.float32))
    extra = {"no_calibration": ["--int8", "--calibration-samples", "0"],
             "damaged_twin": ["--int8"], "mismatched_twin": ["--int8"]}.get(case, [])
    r = run_cli("edgetl", "convert", run, *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert ("--calibration-samples 0" if case == "no_calibration" else str(run)) in err[0]
    if case.endswith("_twin"):
        assert "heldout_head.npz" in err[0] and "delete it" in err[0]
    assert not (run / "deploy").exists() or not any((run / "deploy").iterdir())   # nothing half-written


def test_an_artifact_whose_tensors_do_not_match_its_precision_is_refused(deployed):
    from converter.convert import check_tensor_types
    from edge_runtime.interpreter import load_interpreter

    fp32, int8 = (load_interpreter(deployed / f"model_{p}.tflite") for p in ("fp32", "int8"))
    check_tensor_types(fp32, "fp32", "uint8", deployed / "model_fp32.tflite")
    check_tensor_types(int8, "int8", "uint8", deployed / "model_int8.tflite")
    with pytest.raises(UserError, match="not a valid int8 artifact"):
        check_tensor_types(fp32, "int8", "uint8", deployed / "model_fp32.tflite")
    with pytest.raises(UserError, match="not a valid fp16 artifact"):
        check_tensor_types(int8, "fp16", "uint8", deployed / "model_int8.tflite")


def test_unwritable_output_folder(small_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    r = run_cli("edgetl", "convert", small_run, "--out", blocker / "deploy")
    assert r.returncode == 2 and "not writable" in r.stderr


def _start_convert(run, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "edgetl.cli", "convert", str(run), "--out", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_a_staged_artifact(p, out):
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not list(out.parent.glob(f".{out.name}.staging-*/*.tflite")):
        time.sleep(0.01)
    assert p.poll() is None, "convert ended before the first artifact was staged"


def test_a_killed_convert_force_leaves_the_old_deploy_folder_whole(deployed, small_run, tmp_path):
    out = tmp_path / "deploy"
    shutil.copytree(deployed, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    p = _start_convert(small_run, out, "--fp32", "--fp16", "--int8", "--force")
    _wait_for_a_staged_artifact(p, out)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before       # old set, whole and consistent
    m = json.loads((out / "manifest.json").read_text())
    assert all(sha256_file(out / a["file"]) == a["sha256"] for a in m["artifacts"])
    from edge_runtime.atomic import replacing_dir
    assert list(tmp_path.glob(".deploy.staging-*"))                        # the killed run's stage...
    with replacing_dir(tmp_path / "deploy") as stage:
        for f in out.iterdir():
            shutil.copy2(f, stage / f.name)
    assert not list(tmp_path.glob(".deploy.staging-*"))                    # ...is removed by the next writer


def test_ctrl_c_into_a_new_out_leaves_nothing(small_run, tmp_path):
    out = tmp_path / "deploy"
    p = _start_convert(small_run, out, "--fp32", "--fp16", "--dynamic", "--int8")
    _wait_for_a_staged_artifact(p, out)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=300) != 0
    assert not out.exists() and not list(tmp_path.glob(".deploy.*"))


def test_converting_into_another_runs_deploy_folder_does_not_mix_the_runs(deployed, small_run, tmp_path):
    out = tmp_path / "deploy"
    shutil.copytree(deployed, out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "source_run": "/elsewhere/another-run"}))
    (out / "benchmark.json").write_text("{}")            # the other model's device timing: not carried
    r = run_cli("edgetl", "convert", small_run, "--fp32", "--force", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert [a["precision"] for a in m["artifacts"]] == ["fp32"] and m["source_run"] == str(small_run.resolve())
    assert sorted(f.name for f in out.iterdir()) == ["labels.txt", "manifest.json", "model_fp32.tflite"]


def test_converting_one_precision_keeps_the_runs_other_artifacts(deployed, small_run, tmp_path):
    out = tmp_path / "deploy"
    shutil.copytree(deployed, out)
    int8 = (out / "model_int8.tflite").read_bytes()
    r = run_cli("edgetl", "convert", small_run, "--fp32", "--force", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert [a["precision"] for a in m["artifacts"]] == ["fp32", "int8"] and m["default"] == "int8"
    assert (out / "model_int8.tflite").read_bytes() == int8


def test_every_artifact_carries_standard_metadata_and_labels(deployed):
    from converter.metadata import read_metadata
    from edge_runtime.embedded import embedded_files

    for prec, out_name in (("fp32", "probabilities"), ("int8", "probabilities")):
        blob = (deployed / f"model_{prec}.tflite").read_bytes()
        md = read_metadata(blob)
        assert md["input"]["size"] == 96 and md["input"]["color_space"] == 1  # RGB
        assert md["input"]["min"] == [0.0] and md["input"]["max"] == [255.0]
        assert md["input"]["mean"] == [0.0] and md["input"]["std"] == [1.0]  # normalisation is baked in
        assert md["output"]["name"] == out_name and md["output"]["files"] == [("labels.txt", 2)]  # AXIS_LABELS
        assert embedded_files(blob)["labels.txt"].decode().split() == ["dotted", "leopard", "striped"]


def test_bare_tflite_knows_its_labels_and_output_meaning(deployed, tmp_path):
    from edge_runtime import Classifier

    lone = tmp_path / "alone.tflite"           # no manifest, no labels.txt beside it
    shutil.copy(deployed / "model_int8.tflite", lone)
    bare, full = Classifier(lone), Classifier(deployed)
    assert bare.labels == full.labels and bare.probabilities is True    # int8 ends in a float SOFTMAX
    img = sorted((ROOT.parent / "shared" / "assets" / "samples").glob("*.jpg"))[0]
    # same decode on both sides: the bare file has no manifest to say JPEG draft decoding was verified
    assert bare.draft is False
    np.testing.assert_allclose(bare.predict(img), full.predict(img, draft=False))


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_mediapipe_image_classifier_sees_the_same_probabilities(deployed, small_run, precision):
    """An Android-class client (MediaPipe Tasks) loads an artifact alone: every class's score is a
    probability in [0, 1], they sum to 1, and each equals edge-predict's within 0.02."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from edge_runtime import Classifier
    from edge_runtime.image import load_image
    from trainer.data.split import Split

    clf = Classifier(deployed, precision=precision)
    test_paths, _ = Split.load(small_run / "split").paths_labels("test")
    photos = sorted((ROOT.parent / "shared" / "assets" / "samples").glob("*.jpg")) + list(test_paths)
    opts = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(deployed / f"model_{precision}.tflite")),
        max_results=len(clf.labels))
    with vision.ImageClassifier.create_from_options(opts) as mpc:
        for p in photos:
            # same pixels for both (the device's resize), so the comparison is about the model file
            px = np.ascontiguousarray(load_image(p, clf.size, clf.resize_method))
            got = {c.category_name: c.score for c in mpc.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=px)).classifications[0].categories}
            ours = dict(clf.classify(px, len(clf.labels)))
            assert set(got) == set(ours) and all(0.0 <= v <= 1.0 for v in got.values()), (p, got)
            assert abs(sum(got.values()) - 1.0) < 0.02, (p, got)
            assert all(abs(got[k] - ours[k]) <= 0.02 for k in ours), (p, got, ours)
            assert max(got, key=got.get) == max(ours, key=ours.get), p


def test_a_runs_resize_choice_travels_to_the_device(synth_data, tmp_path):
    """--resize at training is what feature caching, calibration, verification and the device
    all use: the manifest records it and the Classifier resizes frames with it."""
    from edge_runtime import Classifier
    from edge_runtime.image import load_image
    from tests.conftest import SAMPLES, WEIGHTS

    run = tmp_path / "run"
    r = run_cli("edgetl", "train", synth_data, "--out", run, "--backbone", "mobilenet_v2", "--alpha", "0.35",
                "--size", "96", "--epochs", "5",
                "--resize", "reduce-nearest", "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["input"]["resize"] == "reduce-nearest"
    r = run_cli("edgetl", "convert", run, "--fp32")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run / "deploy" / "manifest.json").read_text())
    assert m["input"]["resize"] == "reduce-nearest"
    clf = Classifier(run / "deploy")
    frame = np.asarray(load_image(SAMPLES / "cat.jpg", 227))
    frame = np.concatenate([frame, frame[::-1]], axis=0)  # 454x227: a frame that really shrinks
    np.testing.assert_array_equal(clf.preprocess(frame)[0], load_image(frame, 96, "reduce-nearest"))
    assert not np.array_equal(clf.preprocess(frame)[0], load_image(frame, 96, "bilinear"))
    r = run_cli("edge-predict", run / "deploy", "--eval", run / "split" / "test.tsv", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["accuracy"] == m["artifacts"][0]["verification"]["accuracy"]


def test_a_manifest_with_an_unknown_resize_is_refused_by_name(deployed, tmp_path):
    from edge_runtime import Classifier

    d = shutil.copytree(deployed, tmp_path / "deploy")
    m = json.loads((d / "manifest.json").read_text())
    m["input"]["resize"] = "lanczos9"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="'lanczos9' is unknown.*upgrade edgetl"):
        Classifier(d)


def test_a_failed_artifact_named_explicitly_loads_and_a_hand_edited_default_is_refused(deployed, tmp_path):
    """The gate itself is tested in test_trust.py (a deliberately damaged int8 head fails it)."""
    from edge_runtime import Classifier
    out = shutil.copytree(deployed, tmp_path / "d")
    m = json.loads((out / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["precision"] == "int8":
            a["verification"]["status"] = "failed"
    m["default"] = "fp32"
    (out / "manifest.json").write_text(json.dumps(m))
    assert Classifier(out).precision == "fp32"                       # the device's default skips it
    assert Classifier(out, precision="int8").precision == "int8"     # named explicitly: allowed
    m["default"] = "int8"                                            # a hand-edited default is refused
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="failed verification"):
        Classifier(out)


def test_a_folder_whose_only_artifact_failed_has_no_default(deployed, tmp_path):
    from edge_runtime.manifest import load_manifest
    d = tmp_path / "d"
    shutil.copytree(deployed, d)
    m = json.loads((d / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["precision"] == "int8"]
    m["artifacts"][0]["verification"]["status"] = "failed"
    m["default"] = None
    (d / "manifest.json").write_text(json.dumps(m))
    r = run_cli("edge-predict", d, ROOT.parent / "shared" / "assets" / "samples" / "cat.jpg")
    assert r.returncode == 2 and "no artifact passed verification" in r.stderr
    assert load_manifest(d).artifact("int8").precision == "int8"
