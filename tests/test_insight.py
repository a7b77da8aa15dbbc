"""Insight: Grad-CAM finds the object, dreams reach their class, attacks fool the float model and
the device models; every command refuses bad input in one line. Real ImageNet weights throughout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOWERS, SAMPLES, WEIGHTS, copy_subset, run_cli
from PIL import Image

MNV2_035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
MNV2_10 = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
MNV2_TOP = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_top_qathead.h5"
CLASS_INDEX = WEIGHTS.parent / "labels" / "imagenet_class_index.json"


def _train(data, out, **kw):
    from trainer.config import TrainConfig
    from trainer.train import train

    train(TrainConfig(data=str(data), out=str(out), **kw))
    return out


@pytest.fixture(scope="module")
def imagenet_subject():
    from trainer.insight import open_imagenet

    return open_imagenet("mobilenet_v2", str(MNV2_TOP), labels=str(CLASS_INDEX))


@pytest.fixture(scope="module")
def pointing_data(tmp_path_factory):
    from trainer.data.synthetic import generate_pointing

    return generate_pointing(tmp_path_factory.mktemp("pointing") / "data", per_class=80, size=224, seed=0)


# ----------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("backbone,alpha,weights", [("mobilenet_v2", 0.35, str(MNV2_035)),
                                                    ("efficientnet_lite0", None, "imagenet")])
def test_grad_cam_points_at_the_class_patch(pointing_data, tmp_path, backbone, alpha, weights):
    """Pointing game: the heatmap's maximum lies inside the patch that decides the label, for
    >= 90 % of 50 correctly classified held-out photos."""
    from trainer.data.split import Split
    from trainer.insight import explain, open_run

    run = _train(pointing_data, tmp_path / "run", backbone=backbone, alpha=alpha, size=224, weights=weights,
                 fractions=(0.45, 0.1, 0.45), seed=0)
    subject = open_run(run)
    paths, y = Split.load(run / "split").paths_labels("test")
    boxes = json.loads((pointing_data / "boxes.json").read_text())
    hits = []
    for path, label, exp in zip(paths, y, explain(subject, paths)):
        if exp.class_index != label:
            continue
        x0, y0, x1, y1 = boxes["/".join(Path(path).parts[-2:])]
        x, yy = exp.peak
        hits.append(x0 <= x < x1 and y0 <= yy < y1)
    assert len(hits) >= 50, f"only {len(hits)} correct test photos"
    assert np.mean(hits[:50]) >= 0.9, f"{backbone}: pointing accuracy {np.mean(hits[:50]):.2f}"


def test_grad_cam_on_imagenet_finds_the_cat_and_the_dog(imagenet_subject):
    """On the real ImageNet MobileNetV2 the heatmap peaks on the animal (boxes drawn by hand on the
    224 px frames: the cat's head and body, away from the curtain and the wall; the dog's face)."""
    from trainer.insight import explain

    cat, dog = explain(imagenet_subject, [SAMPLES / "cat.jpg", SAMPLES / "dog.jpg"])
    assert cat.top[0][0] in ("tabby", "tiger_cat", "Egyptian_cat")
    assert dog.top[0][0] in ("Labrador_retriever", "American_Staffordshire_terrier", "Staffordshire_bullterrier")
    for exp, (x0, y0, x1, y1) in ((cat, (50, 20, 200, 224)), (dog, (20, 10, 210, 224))):
        x, y = exp.peak
        assert x0 <= x < x1 and y0 <= y < y1, (exp.source, exp.peak)
        assert exp.heatmap.shape == (224, 224) and 0.95 <= exp.heatmap.max() <= 1.0


def test_explain_works_on_a_fine_tuned_run(synth_data, tmp_path):
    from trainer.insight import explain, open_run

    run = _train(synth_data, tmp_path / "ft", backbone="mobilenet_v2", alpha=0.35, size=96, weights=str(MNV2_035),
                 fine_tune=True, fine_tune_epochs=1, fine_tune_blocks=2)
    subject = open_run(run)
    photo = next((synth_data / "striped").iterdir())
    exp, = explain(subject, [photo], class_name="striped")
    assert subject.classes[exp.class_index] == "striped"
    want = subject.model(subject.load(photo)[None].astype(np.float32)).numpy()[0]
    assert np.allclose(exp.probabilities, want, atol=1e-5)


def test_explain_cli_writes_a_figure_per_photo_and_the_misclassified_grid(small_run, synth_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("cache", "deploy"))
    photos = [next((synth_data / c).iterdir()) for c in ("dotted", "leopard")]
    r = run_cli("edgetl", "explain", run, *photos)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all("Grad-CAM of" in l and "peaks at" in l for l in lines)
    for p in photos:
        assert Image.open(run / "insight" / "explain" / f"{p.stem}_cam.png").size[0] > 300
    r = run_cli("edgetl", "explain", run, "--misclassified")
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    wrong = metrics["n"] - round(metrics["accuracy"] * metrics["n"])
    if wrong:
        assert (run / "plots" / "misclassified_cam.png").is_file()
        assert f"({min(wrong, 16)} wrong prediction(s))" in r.stdout
    else:
        assert "no wrong test predictions" in r.stdout


# ----------------------------------------------------------------------------- inside the backbone
def test_activations_pick_early_middle_late_stages(small_run, synth_data, tmp_path):
    from trainer.insight import activations, open_run

    subject = open_run(small_run)
    photo = next((synth_data / "dotted").iterdir())
    image, maps = activations(subject, photo, "early,middle,late", per_layer=8)
    sides = [m.shape[0] for m in maps]
    assert image.shape == (96, 96, 3) and len(maps) == 3 and sides == sorted(sides, reverse=True)
    assert maps[-1].layer == subject.default_cam_layer()
    assert all(m.maps.shape[-1] == 8 and m.maps.min() >= 0 and m.maps.max() <= 1 for m in maps)
    r = run_cli("edgetl", "activations", small_run, photo, "--layers", f"early,{maps[1].layer}", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / f"activations_{photo.stem}.png").is_file() and r.stdout.count("most active") == 2


def test_filters_show_the_first_convolution_and_patterns_that_excite_deeper_filters(small_run, tmp_path):
    from trainer.insight import filter_patterns, first_conv_filters, open_run

    subject = open_run(small_run)
    name, kernels = first_conv_filters(subject)
    assert name == "Conv1" and kernels.shape == (16, 3, 3, 3)     # MobileNetV2 0.35: 16 stem filters
    layer, chosen, images = filter_patterns(subject, n=4, steps=30)
    assert len(chosen) == 4 and images.shape == (4, 96, 96, 3) and images.dtype == np.uint8
    assert layer == "block_6_expand_BN"     # the middle stage's ReLU, read before the ReLU
    # each pattern excites its own filter more than the other patterns and the start noise do
    from trainer.insight.optimize import start_noise
    probe = subject.probe((layer,))
    acts = np.asarray(probe(images.astype(np.float32))[0]).mean(axis=(1, 2))[:, chosen]
    start = np.asarray(probe(start_noise(np.random.default_rng(0), 4, 96))[0]).mean(axis=(1, 2))[:, chosen]
    assert (acts.argmax(axis=0) == np.arange(4)).all(), acts
    assert (np.diag(acts) > np.diag(start)).all()
    r = run_cli("edgetl", "filters", small_run, "--n", "4", "--steps", "5", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "filters_first_conv.png").is_file() and len(list(tmp_path.glob("filters_*.png"))) == 2


# ----------------------------------------------------------------------------- dream
def test_dream_reaches_each_class_of_a_trained_run_and_tv_makes_it_smoother(small_run):
    from trainer.insight import dream, open_run

    subject = open_run(small_run)
    for c in subject.classes:
        r = dream(subject, c, steps=60)
        assert r.probability >= 0.9, (c, r.probability)
        assert subject.probabilities(r.image[None])[0, subject.class_index(c)] == pytest.approx(r.probability)
    rough = dream(subject, subject.classes[0], steps=60, tv_weight=0)
    smooth = dream(subject, subject.classes[0], steps=60)
    assert min(rough.probability, smooth.probability) >= 0.9
    assert smooth.total_variation * 2 <= rough.total_variation, (smooth.total_variation, rough.total_variation)


def test_dream_on_the_imagenet_head_is_seeded_and_smooth(imagenet_subject):
    from trainer.insight import dream

    for c in ("tabby", "zebra"):
        r = dream(imagenet_subject, c, steps=80)
        assert r.probability >= 0.9, (c, r.probability)
    rough = dream(imagenet_subject, "zebra", steps=80, tv_weight=0)
    assert rough.probability >= 0.9 and r.total_variation * 2 <= rough.total_variation
    again = dream(imagenet_subject, "zebra", steps=80)
    assert np.array_equal(again.image, r.image)
    other = dream(imagenet_subject, "zebra", steps=80, seed=1)
    assert not np.array_equal(other.image, r.image)


def test_dream_cli_writes_the_image_and_its_numbers(small_run, tmp_path):
    r = run_cli("edgetl", "dream", small_run, "leopard", "--steps", "30", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "dream_leopard.json").read_text())
    img = np.asarray(Image.open(tmp_path / "dream_leopard.png"))
    assert img.shape == (96, 96, 3) and info["class_name"] == "leopard" and info["steps"] == 30
    from trainer.insight.optimize import total_variation
    assert info["total_variation"] == pytest.approx(float(total_variation(img)[0]), rel=1e-5)
    assert f"probability {info['probability']:.4f}" in r.stdout


# ----------------------------------------------------------------------------- attack
@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    """MobileNetV2 1.0@224 with the real ImageNet weights on a flowers5 subset (40 photos a class)."""
    base = tmp_path_factory.mktemp("flowers_insight")
    data = copy_subset(FLOWERS, base / "data", 40)
    return _train(data, base / "run", backbone="mobilenet_v2", alpha=1.0, size=224, weights=str(MNV2_10),
                  fractions=(0.5, 0.1, 0.4), seed=0)


def test_targeted_attack_succeeds_on_20_flowers_at_8_of_255(flowers_run):
    from trainer.data.split import Split
    from trainer.insight import open_run
    from trainer.insight.attack import pgd

    subject = open_run(flowers_run)
    paths, y = Split.load(flowers_run / "split").paths_labels("test")
    x = np.stack([subject.load(p) for p in paths])
    right = np.flatnonzero(subject.probabilities(x).argmax(1) == y)[:20]
    assert len(right) == 20
    target = (y[right] + 1) % len(subject.classes)
    adv = pgd(subject, x[right], target, True, 8 / 255, steps=20)
    assert np.abs(adv.astype(int) - x[right].astype(int)).max() <= 8
    success = (subject.probabilities(adv).argmax(1) == target).mean()
    assert success >= 0.95, success


def test_attack_cli_checks_the_device_models_and_saves_losslessly(small_run, deployed, synth_data, tmp_path):
    photo = next((synth_data / "dotted").iterdir())
    r = run_cli("edgetl", "attack", small_run, photo, "--target", "striped", "--jpeg", "90", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / f"attack_{photo.stem}.json").read_text())
    adv = np.asarray(Image.open(tmp_path / f"attack_{photo.stem}.png"))
    from trainer.insight import open_run
    subject = open_run(small_run)
    original = subject.load(photo)
    assert np.abs(adv.astype(int) - original.astype(int)).max() <= 8 and info["linf"] <= 8 / 255 + 1e-9
    assert info["target"] == "striped"
    assert info["success"] == (subject.classes[int(subject.probabilities(adv[None]).argmax())] == "striped")
    assert sorted(d["precision"] for d in info["devices"]) == ["fp32", "int8"]
    from edge_runtime.classifier import Classifier
    for d in info["devices"]:
        label, p = Classifier(deployed, precision=d["precision"]).classify(adv, top_k=1)[0]
        assert d["adversarial"][0] == label and d["adversarial"][1] == pytest.approx(p, abs=1e-6)
    assert info["jpeg"]["quality"] == 90 and len(info["jpeg"]["devices"]) == 2
    assert (tmp_path / f"attack_{photo.stem}_figure.png").is_file()


def test_attack_report_gives_success_and_transfer_per_eps(small_run, deployed, tmp_path):
    from trainer.insight import open_run, robustness_report

    rep = robustness_report(open_run(small_run), n=6, steps=5)
    assert [r["eps"] for r in rep["rows"]] == ["1/255", "2/255", "4/255", "8/255"]
    rates = [r["success_rate"] for r in rep["rows"]]
    assert rates == sorted(rates) and rates[-1] > 0
    assert set(rep["rows"][-1]["transfer"]) == {"fp32", "int8"}
    r = run_cli("edgetl", "attack", small_run, "--report", "--n", "4", "--steps", "3", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 8/255 |" in (tmp_path / "attack_report.md").read_text()
    assert json.loads((tmp_path / "attack_report.json").read_text())["images"] == 4


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["missing_run", "tflite", "deploy_folder", "not_an_image", "unknown_class",
                                  "unknown_layer", "unknown_target", "bad_eps"])
def test_each_command_refuses_bad_input_in_one_line(case, small_run, deployed, tmp_path):
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a photo")
    sample = SAMPLES / "daisy.jpg"
    tflite = next(deployed.glob("*.tflite"))
    args, expect = {
        "missing_run": (("explain", tmp_path / "nope", sample), "no such run folder"),
        "tflite": (("attack", tflite, sample), "insight needs the training run folder"),
        "deploy_folder": (("filters", deployed), "is a deploy folder"),
        "not_an_image": (("activations", small_run, junk), "not an image"),
        "unknown_class": (("dream", small_run, "zebra"), "unknown class 'zebra'"),
        "unknown_layer": (("explain", small_run, sample, "--layer", "block_99"), "no feature-map layer 'block_99'"),
        "unknown_target": (("attack", small_run, sample, "--target", "rose"), "unknown class 'rose'"),
        "bad_eps": (("attack", small_run, sample, "--eps", "big"), "--eps 'big'"),
    }[case]
    r = run_cli("edgetl", *args, "--out", tmp_path / "out")
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
