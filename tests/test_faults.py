"""Bad options get one clear error line and exit 2, before anything is written or overwritten."""
import json

import pytest

from tests.conftest import SAMPLES, run_cli
from trainer.evaluate import data_name


def _one_error_line(r, starts: str):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {starts}"), last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--top-k", "-1"], "--top-k -1: show at least 1 class"),
    (["--top-k", "0"], "--top-k 0: show at least 1 class"),
    (["--threshold", "2"], "--threshold 2.0: scores are probabilities; give a number from 0 to 1"),
    (["--threshold", "nan"], "--threshold nan: scores are probabilities"),
    (["--threads", "0"], "--threads 0: give 1 or more, or leave it out"),
    (["--threads", "-1"], "--threads -1: give 1 or more"),
    (["--max-frames", "0"], "--max-frames 0: give 1 or more"),
])
def test_edge_predict_refuses_options_that_would_print_nothing(deployed, args, message):
    _one_error_line(run_cli("edge-predict", deployed, SAMPLES / "cat.jpg", *args), message)


@pytest.mark.parametrize("camera", ["-1", "99999999999"])
def test_camera_index_out_of_range_is_an_error_not_a_crash(deployed, camera):
    _one_error_line(run_cli("edge-predict", deployed, "--camera", camera), f"--camera {camera}: a camera index is 0 to")


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs 0: give 1 or more timed runs"),
    (["--precision", "int4"], "{deploy}: no int4 artifact here; it has fp32, int8"),
])
def test_benchmark_refuses_bad_options_and_keeps_the_saved_report(deployed, args, message):
    saved = deployed / "benchmark.json"
    before = saved.read_bytes() if saved.exists() else None
    _one_error_line(run_cli("edge-predict", deployed, "--benchmark", *args), message.format(deploy=deployed))
    assert (saved.read_bytes() if saved.exists() else None) == before


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs 0: must be >= 1"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--fractions", "0.5,0.5,0"], "--fractions 0.5,0.5,0.0: give train,val,test shares that add up to 1"),
    (["--fractions", "0.7,0.7,0.1"], "--fractions 0.7,0.7,0.1: give train,val,test shares"),
    (["--fine-tune", "--fractions", "0.9,0,0.1"], "--fine-tune early-stops on the validation split"),
    (["--fine-tune", "--backbone", "hub:/models/feature_vector"], "--fine-tune with hub:/models/feature_vector: "
                                                                  "a hub backbone is a SavedModel"),
])
def test_train_checks_numbers_before_writing_anything(synth_data, tmp_path, args, message):
    out = tmp_path / "run"
    _one_error_line(run_cli("edgetl", "train", synth_data, "--out", out, *args), message)
    assert not out.exists()          # nothing saved that --resume would trip over


def test_synthetic_data_of_size_zero_is_refused(tmp_path):
    _one_error_line(run_cli("edgetl", "data", "synth", tmp_path / "s", "--size", "0"),
                    "synthetic data needs --per-class 1-100000, --size 16-4096")
    assert not (tmp_path / "s").exists()


def test_resume_works_on_the_folder_given_after_the_run_was_moved(small_run, tmp_path):
    """config.json keeps the --out the run was started with; resume must not follow it."""
    import shutil
    original = (small_run / "metrics.json").read_bytes()
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(small_run, moved)
    cfg = json.loads((moved / "config.json").read_text())
    assert cfg["train"]["out"] != str(moved)
    state = json.loads((moved / "state.json").read_text())
    (moved / "state.json").write_text(json.dumps({**state, "phase": "head"}))   # as if killed after the head
    (moved / "metrics.json").unlink()
    r = run_cli("edgetl", "train", "--resume", moved, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((moved / "state.json").read_text())["phase"] == "done"
    assert (moved / "metrics.json").exists()
    assert (small_run / "metrics.json").read_bytes() == original     # the old location is untouched


def test_eval_of_a_run_folder_scores_its_test_split(deployed, small_run):
    r = run_cli("edge-predict", deployed, "--eval", small_run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["eval"] == str(small_run / "split" / "test.tsv")
    assert out["n"] == len((small_run / "split" / "test.tsv").read_text().split("\n")) - 2   # header + final newline


def test_eval_names_an_unreadable_photo_and_scores_the_rest(deployed, synth_data, tmp_path):
    import shutil
    for c in ("dotted", "striped"):
        (tmp_path / c).mkdir()
        for f in sorted((synth_data / c).iterdir())[:3]:
            shutil.copy(f, tmp_path / c / f.name)
    (tmp_path / "dotted" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = run_cli("edge-predict", deployed, "--eval", tmp_path, "--json")
    assert r.returncode == 1
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert (out["n"], out["skipped"]) == (6, 1)


@pytest.mark.parametrize("args, message", [
    (["--eval", "{empty}"], "{empty}: no labelled photos found"),
    (["--dir", "{empty}/nope"], "--dir {empty}/nope: no such folder"),
    (["--eval", "{empty}", "{cat}"], "--eval and IMAGE/--dir cannot be combined"),
    (["--video", "{cat}", "--eval", "{empty}"], "--eval and --video cannot be combined"),
])
def test_edge_predict_refuses_empty_missing_or_mixed_sources(deployed, tmp_path, args, message):
    fill = {"empty": tmp_path, "cat": SAMPLES / "cat.jpg"}
    r = run_cli("edge-predict", deployed, *[a.format(**fill) for a in args])
    _one_error_line(r, message.format(**fill))


def _copy_deploy(deployed, tmp_path):
    import shutil
    dst = tmp_path / "deploy"
    shutil.copytree(deployed, dst)
    return dst


def _edit_manifest(folder, change):
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    p.write_text(json.dumps(change(m)))


@pytest.mark.parametrize("change, problem", [
    (lambda m: [m], "a JSON list, expected an object"),
    (lambda m: None, "a JSON NoneType, expected an object"),
    (lambda m: {k: v for k, v in m.items() if k != "labels"}, "'labels' must be a non-empty list"),
    (lambda m: {k: v for k, v in m.items() if k != "input"}, "'input' must give an integer 'size'"),
    (lambda m: {k: v for k, v in m.items() if k != "artifacts"}, "'artifacts' must be a non-empty list"),
    (lambda m: {**m, "artifacts": [{k: v for k, v in a.items() if k != "sha256"} for a in m["artifacts"]]},
     "artifact 0 has no 'sha256'"),
    (lambda m: {**m, "artifacts": [{k: v for k, v in a.items() if k != "file"} for a in m["artifacts"]]},
     "artifact 0 has no 'file'"),
])
def test_a_manifest_of_the_wrong_shape_is_named_in_one_line(deployed, tmp_path, change, problem):
    folder = _copy_deploy(deployed, tmp_path)
    _edit_manifest(folder, change)
    _one_error_line(run_cli("edge-predict", folder, SAMPLES / "cat.jpg"),
                    f"{folder / 'manifest.json'}: not a valid edgetl manifest ({problem}")


@pytest.mark.parametrize("change, says", [
    (lambda m: {**m, "labels": list(reversed(m["labels"]))}, "its labels differ from those embedded"),
    (lambda m: {**m, "artifacts": [{**a, "output": {**a["output"], "probabilities": not a["output"]["probabilities"]}}
                                   for a in m["artifacts"]]}, "says probabilities="),
])
def test_a_manifest_that_disagrees_with_the_model_is_refused(deployed, tmp_path, change, says):
    folder = _copy_deploy(deployed, tmp_path)
    _edit_manifest(folder, change)
    r = run_cli("edge-predict", folder, SAMPLES / "cat.jpg")
    _one_error_line(r, f"{folder / 'manifest.json'}: {says}")


def test_a_bare_tflite_without_labels_warns_once_and_json_names_the_runtime(deployed, tmp_path):
    import io
    import zipfile
    blob = (deployed / "model_fp32.tflite").read_bytes()
    start = min(z.header_offset for z in zipfile.ZipFile(io.BytesIO(blob)).infolist())   # the appended zip
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(blob[:start])
    r = run_cli("edge-predict", bare, SAMPLES / "cat.jpg", SAMPLES / "dog.jpg", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 2 and "no class names embedded" in warnings[0], r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 2 and all(row["runtime"] == "ai-edge-litert" for row in rows)
    assert {row["top_k"][0]["label"] for row in rows} <= {"0", "1", "2"}


def test_eval_on_other_data_keeps_the_test_results_and_names_skipped_files(small_run, synth_data, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("cache", "deploy"))
    data = tmp_path / "field photos"
    for c in ("dotted", "striped", "leopard"):
        (data / c).mkdir(parents=True)
        for f in sorted((synth_data / c).iterdir())[:4]:
            shutil.copy2(f, data / c / f.name)
    (data / "striped" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    before = {p.name: p.read_bytes() for p in (run / "plots").glob("*.png")}
    test_before = json.loads((run / "metrics.json").read_text())["test"]
    r = run_cli("edgetl", "eval", run, "--data", data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(l.startswith("warning: skipped") and "broken.jpg" in l for l in r.stderr.splitlines()), r.stderr
    assert {p.name: p.read_bytes() for p in (run / "plots").glob("*.png")} == before
    report = data_name(data)
    assert report.startswith("data_field_photos-") and (run / "plots" / report / "confusion_matrix.png").is_file()
    assert f"plots/{report}/" in r.stdout
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"] == test_before and m[f"data:{data}"]["n"] == 12


# -- malformed run folders, split lists and image headers ----------------------------------------

@pytest.mark.parametrize("content, message", [
    ("# root\t/x\na.jpg\tdotted\textra\n", "{f}:2: expected 'relative/path<TAB>class'"),
    ("# root\t/x\njust_a_path.jpg\n", "{f}:2: expected 'relative/path<TAB>class'"),
    ("a.jpg\tdotted\n", "{f}: no '# root<TAB>/data/folder' first line"),
    (b"\xff\xfe\x00bad", "{f}: cannot be read as a split list"),
])
def test_a_malformed_split_list_is_one_line_naming_it(deployed, tmp_path, content, message):
    f = tmp_path / "test.tsv"
    (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
    _one_error_line(run_cli("edge-predict", deployed, "--eval", f), message.format(f=f))


@pytest.mark.parametrize("command, missing", [("eval", "split"), ("convert", "split"), ("convert", "config.json")])
def test_a_run_missing_its_split_or_config_is_named_with_the_fix(small_run, tmp_path, command, missing):
    import shutil
    run = shutil.copytree(small_run, tmp_path / "run", ignore=shutil.ignore_patterns("deploy", "cache"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    shutil.rmtree(run / missing) if missing == "split" else (run / missing).unlink()
    r = run_cli("edgetl", command, run)
    _one_error_line(r, f"{run / missing}")
    assert "restore" in r.stderr
    assert not (run / "deploy").exists()
    assert [p for p in before if not str(p).startswith(missing)] == sorted(p.relative_to(run) for p in run.rglob("*"))


def test_eval_after_the_data_folder_moved_names_it_and_takes_its_new_place(small_run, synth_data, tmp_path):
    import shutil
    data = shutil.copytree(synth_data, tmp_path / "data")
    run = shutil.copytree(small_run, tmp_path / "run", ignore=shutil.ignore_patterns("deploy", "cache"))
    split = run / "split"
    for f in split.glob("*.tsv"):          # the copy was trained from tmp_path/data, which then moves
        f.write_text(f.read_text().replace(str(synth_data.resolve()), str(data.resolve()), 1))
    meta = json.loads((split / "split.json").read_text())
    (split / "split.json").write_text(json.dumps({**meta, "root": str(data.resolve())}))
    moved = data.rename(tmp_path / "moved")
    for command in ("eval", "convert"):
        _one_error_line(run_cli("edgetl", command, run), f"{data.resolve()}: the data folder this run was split "
                        "from is gone (moved or deleted); put it back, or give its new place with --data-root DIR")
    r = run_cli("edgetl", "eval", run, "--data-root", moved, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n"] == sum(meta["counts"]["test"].values())


def _text_chunk_bomb(path):
    """A 20 KB PNG whose zTXt chunk inflates to 20 MB: Pillow refuses it while reading the header."""
    import io
    import struct
    import zlib

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    png = buf.getvalue()
    data = b"Comment\x00\x00" + zlib.compress(b"A" * (20 << 20), 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    path.write_bytes(png[:33] + chunk + png[33:])    # right after IHDR
    return path


def test_a_png_text_chunk_bomb_is_one_bad_file_among_good_ones(deployed, synth_data, tmp_path):
    import shutil

    from tests.conftest import WEIGHTS
    data = tmp_path / "data"
    for c in ("dotted", "striped"):
        (data / c).mkdir(parents=True)
        for f in sorted((synth_data / c).iterdir())[:3]:
            shutil.copy(f, data / c / f.name)
    bomb = _text_chunk_bomb(data / "dotted" / "bomb.png")
    says = "damaged or hostile image header"

    r = run_cli("edge-predict", deployed, "--dir", data / "dotted")
    assert r.returncode == 1 and f"{bomb}: {says}" in r.stderr and r.stdout.count("dotted") >= 3, r.stderr
    r = run_cli("edge-predict", deployed, "--eval", data, "--json")
    assert r.returncode == 1 and says in r.stderr and json.loads(r.stdout.splitlines()[-1])["n"] == 6
    r = run_cli("edgetl", "data", "inspect", data)
    assert r.returncode == 0 and "bad files skipped: 1" in r.stdout and says in r.stdout, r.stderr[-2000:]
    r = run_cli("edgetl", "data", "split", data, "--out", tmp_path / "split", "--fractions", "0.34,0.33,0.33")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bomb.png" not in "".join(f.read_text() for f in (tmp_path / "split").glob("*.tsv"))
    r = run_cli("edgetl", "imagenet", "--backbone", "mobilenet_v2", "--weights",
                WEIGHTS / "mobilenet_v2_1.0_224_imagenet_top_qathead.h5", "--labels",
                WEIGHTS.parent / "labels" / "imagenet_class_index.json", bomb, SAMPLES / "cat.jpg")
    assert r.returncode == 1 and "Egyptian_cat" in r.stdout and f"{bomb}: {says}" in r.stderr
    assert "Traceback" not in r.stderr
