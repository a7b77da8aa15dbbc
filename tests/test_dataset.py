"""The dataset layer: layouts, bad files, duplicates, deterministic leakage-free splits."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FLOWERS, copy_subset, run_cli
from trainer.data import DataError, load_dataset, make_split
from trainer.data.duplicates import find_groups


def test_inspect_reports_flowers5_classes_and_counts():
    r = run_cli("edgetl", "data", "inspect", FLOWERS, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["counts"] == {"daisy": 742, "dandelion": 1016, "rose": 755, "sunflower": 692, "tulip": 849}
    assert rep["bad_files"] == []
    assert rep["imbalance_ratio"] == pytest.approx(1016 / 692)


@pytest.fixture(scope="module")
def dirty_copy(tmp_path_factory):
    """15 real flower photos per class plus every kind of problem file a real folder has."""
    root = copy_subset(FLOWERS, tmp_path_factory.mktemp("dirty") / "flowers", per_class=15)
    photo = root / "daisy" / sorted(p.name for p in (root / "daisy").iterdir())[0]
    (root / "rose" / "zero.jpg").write_bytes(b"")
    data = photo.read_bytes()
    (root / "rose" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "tulip" / "notes.jpg").write_text("shopping list, not a photo")
    Image.open(photo).convert("CMYK").save(root / "tulip" / "cmyk.jpg")
    gray = np.asarray(Image.open(photo).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(root / "sunflower" / "deep16.png")
    Image.open(photo).convert("RGBA").save(root / "dandelion" / "alpha.png")
    shutil.copy(photo, root / "sunflower" / "copied_from_daisy.jpg")  # exact duplicate, wrong class
    (root / "daisy" / "README.txt").write_text("not an image extension: ignored")
    return root


def test_bad_files_are_named_and_skipped(dirty_copy):
    r = run_cli("edgetl", "data", "inspect", dirty_copy, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    bad = {b["file"]: b["reason"] for b in rep["bad_files"]}
    assert set(bad) == {"rose/zero.jpg", "rose/truncated.jpg", "tulip/notes.jpg"}
    assert "empty" in bad["rose/zero.jpg"] and "truncated" in bad["rose/truncated.jpg"]
    assert "not an image" in bad["tulip/notes.jpg"]
    assert rep["counts"] == {"daisy": 15, "dandelion": 16, "rose": 15, "sunflower": 17, "tulip": 16}
    assert rep["ignored_files"] == ["daisy/README.txt"]


def test_odd_modes_load_as_rgb(dirty_copy):
    ds = load_dataset(dirty_copy)
    modes = {r.rel: r.mode for r in ds.images}
    assert modes["tulip/cmyk.jpg"] == modes["sunflower/deep16.png"] == modes["dandelion/alpha.png"] == "RGB"


def test_cross_class_duplicate_is_reported(dirty_copy):
    rep = json.loads(run_cli("edgetl", "data", "inspect", dirty_copy, "--json").stdout)
    cross = [g for g in rep["duplicate_groups"] if "cross-class" in g["kinds"]]
    files = {f for g in cross for f in g["files"]}
    assert "sunflower/copied_from_daisy.jpg" in files
    assert any(f.startswith("daisy/") for f in files)


def test_text_report_names_bad_files(dirty_copy):
    r = run_cli("edgetl", "data", "inspect", dirty_copy)
    assert r.returncode == 0
    for name in ("rose/zero.jpg", "rose/truncated.jpg", "tulip/notes.jpg", "copied_from_daisy.jpg"):
        assert name in r.stdout


def test_same_seed_same_split_other_seed_differs(synth_data):
    ds = load_dataset(synth_data)
    a, b, c = make_split(ds, seed=0), make_split(ds, seed=0), make_split(ds, seed=1)
    assert a.parts == b.parts
    assert a.parts["test"] != c.parts["test"]


def test_saved_lists_are_identical_for_the_same_seed(synth_data, tmp_path):
    for name in ("one", "two"):
        r = run_cli("edgetl", "data", "split", synth_data, "--out", tmp_path / name, "--seed", "3")
        assert r.returncode == 0, r.stderr
    for s in ("train", "val", "test"):
        assert (tmp_path / "one" / f"{s}.tsv").read_text() == (tmp_path / "two" / f"{s}.tsv").read_text()


def test_every_class_in_every_split_when_it_has_three(tmp_path):
    from trainer.data.synthetic import generate
    root = generate(tmp_path / "tiny", per_class=3, size=48)
    sp = make_split(load_dataset(root), seed=0)
    for split, counts in sp.counts().items():
        assert all(n >= 1 for n in counts.values()), (split, counts)


def test_default_fractions_are_80_10_10_stratified():
    sp = make_split(load_dataset(FLOWERS), seed=0)
    counts = sp.counts()
    for c, n in {"daisy": 742, "dandelion": 1016, "rose": 755, "sunflower": 692, "tulip": 849}.items():
        assert abs(counts["test"][c] - 0.1 * n) <= 3 and abs(counts["val"][c] - 0.1 * n) <= 3
        assert sum(counts[s][c] for s in counts) == n


def test_near_duplicate_groups_stay_on_one_side():
    ds = load_dataset(FLOWERS)
    groups = find_groups([r.dhash for r in ds.images])
    assert len(groups) >= 5  # flowers5 holds re-encoded copies (e.g. tulip x.jpg / x_n.jpg)
    for seed in range(5):
        sp = make_split(ds, seed=seed, groups=groups)
        where = {rel: s for s in ("train", "val", "test") for rel, _ in sp.parts[s]}
        for g in groups:
            assert len({where[ds.images[i].rel] for i in g.members}) == 1


def test_presplit_train_val_uses_val_as_test_and_carves_validation(synth_data, tmp_path):
    root = tmp_path / "presplit"
    for cdir in sorted(synth_data.iterdir()):
        files = sorted(cdir.iterdir())
        for part, chunk in (("train", files[:20]), ("validation", files[20:])):
            (root / part / cdir.name).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / part / cdir.name / f.name)
    sp = make_split(load_dataset(root), seed=0)
    assert {rel.split("/")[0] for rel, _ in sp["test"]} == {"validation"}
    assert len(sp["test"]) == 30 and len(sp["train"]) + len(sp["val"]) == 60
    assert all(rel.startswith("train/") for rel, _ in sp["val"]) and len(sp["val"]) >= 3


def test_split_roundtrip_through_files(synth_data, tmp_path):
    from trainer.data.split import Split
    sp = make_split(load_dataset(synth_data), seed=0)
    sp.save(tmp_path / "split")
    back = Split.load(tmp_path / "split")
    assert back.parts == sp.parts and back.classes == sp.classes


@pytest.mark.parametrize("make,msg", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "no class folders"),
    (lambda p: (p.mkdir(), (p / "a.jpg").write_bytes(b"x")), "1 images lie directly in it"),
    (lambda p: ((p / "cats").mkdir(parents=True), (p / "a.jpg").write_bytes(b"x")), "outside any class folder"),
])
def test_wrong_layouts_give_one_line_errors(tmp_path, make, msg):
    target = tmp_path / "data"
    make(target)
    r = run_cli("edgetl", "data", "inspect", target)
    assert r.returncode == 2
    assert msg in r.stderr and str(target) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_trainability_checks_name_the_problem(tmp_path):
    from trainer.data.synthetic import generate
    one = generate(tmp_path / "one", per_class=4, size=32, classes=("dotted",))
    with pytest.raises(DataError, match="only one class"):
        load_dataset(one).require_trainable()
    few = generate(tmp_path / "few", per_class=4, size=32, classes=("dotted", "striped"))
    for f in sorted((few / "striped").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="'striped' has 1 usable"):
        load_dataset(few).require_trainable()


def test_awkward_class_and_file_names_survive_the_split_lists(tmp_path):
    """`#` (once read as a comment), spaces and unicode round-trip through split/*.tsv."""
    from trainer.data.split import Split
    from trainer.data.synthetic import generate
    src = generate(tmp_path / "src", per_class=10, size=32, classes=("dotted", "striped", "leopard"))
    data = tmp_path / "data"
    for old, new in (("dotted", "#1 dotted"), ("striped", "stripes ünïcode"), ("leopard", "leo pard")):
        shutil.copytree(src / old, data / new)
    (data / "#1 dotted" / "dotted_0000.jpg").rename(data / "#1 dotted" / "# first photo.jpg")
    sp = make_split(load_dataset(data), seed=0)
    sp.save(tmp_path / "split")
    back = Split.load(tmp_path / "split")
    assert back.parts == sp.parts and back.classes == ["#1 dotted", "leo pard", "stripes ünïcode"]
    assert sum(len(v) for v in back.parts.values()) == 30
    paths, y = back.paths_labels("train")
    assert all(Path(p).is_file() for p in paths)


@pytest.mark.parametrize("name", ["tab\there", "line\nbreak"])
def test_names_with_a_tab_or_line_break_are_refused_before_anything_is_written(tmp_path, name):
    from trainer.data.synthetic import generate
    data = generate(tmp_path / "data", per_class=4, size=32, classes=("dotted", "striped"))
    (data / "dotted").rename(data / name)
    r = run_cli("edgetl", "data", "split", data, "--out", tmp_path / "split")
    assert r.returncode == 2 and "rename it without one" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "split").exists()


def test_data_synth_writes_into_a_folder_of_other_files_only_with_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["synth", out, "--per-class", "2", "--size", "32"]
    r = run_cli("edgetl", "data", *args)
    assert r.returncode == 2 and "pass --force" in r.stderr and "keep.txt" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    r = run_cli("edgetl", "data", *args, "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) > 1
    r = run_cli("edgetl", "data", *args, "--force")                 # its images are there: never replaced
    assert r.returncode == 2 and "already" in r.stderr


def test_data_split_never_writes_into_a_folder_of_other_files(synth_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("edgetl", "data", "split", synth_data, "--out", out)
    assert r.returncode == 2 and "did not write" in r.stderr and "keep.txt" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    lists = tmp_path / "lists"
    for _ in range(2):                                               # its own folder: written again
        r = run_cli("edgetl", "data", "split", synth_data, "--out", lists)
        assert r.returncode == 0, r.stderr[-2000:]


def test_one_stratified_sampler_caps_per_class_or_in_total_and_is_seeded():
    from trainer.data.sampling import stratified_sample

    labels = np.array([0] * 50 + [1] * 50 + [2] * 4)
    paths = [f"{c}/{i}.jpg" for i, c in enumerate(labels)]
    chosen, counts = stratified_sample(paths, labels, per_class=10, seed=3)
    assert counts == {0: 10, 1: 10, 2: 4} and len(set(chosen)) == 24       # a small class gives all it has
    _, counts = stratified_sample(paths, labels, n=30, seed=3)
    assert counts == {0: 13, 1: 13, 2: 4}                                   # equal shares, the rest shared out
    assert stratified_sample(paths, labels, n=30, seed=3)[0] == stratified_sample(paths, labels, n=30, seed=3)[0]
    assert stratified_sample(paths, labels, n=30, seed=4)[0] != stratified_sample(paths, labels, n=30, seed=3)[0]
