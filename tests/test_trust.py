"""What edgetl never does: delete or replace a file it did not write, ship an artifact whose labels
or model do not match what it verified, score other photos into a run's own results, or run
bytes it did not verify. Each test is one way a user lost data or got a wrong model before."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_runtime.errors import UserError
from tests.conftest import ROOT, SAMPLES, run_cli
from trainer.runs import rundir as R


def _tree(folder):
    """Every file under ``folder`` with its bytes (and every folder), to compare before/after."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _copy_run(small_run, dst):
    shutil.copytree(small_run, dst, ignore=shutil.ignore_patterns("cache", "deploy"))
    return dst


def _one_error_line(r):
    """Exit 2, the last line the error, the only one (progress lines may come before it)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and lines and lines[-1].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and sum(line.startswith("error") for line in lines) == 1, r.stderr[-2000:]
    return lines[-1]


# -- 1. a folder holding the user's files is never replaced or emptied ----------------------------

@pytest.mark.parametrize("force", [False, True])
def test_convert_out_into_a_folder_of_user_files_leaves_them_byte_identical(small_run, tmp_path, force):
    usb = tmp_path / "usb"
    for rel, text in (("photos/2024/img.txt", "a photo"), ("docs/cv.txt", "my cv"), ("other.tflite", "a model")):
        (usb / rel).parent.mkdir(parents=True, exist_ok=True)
        (usb / rel).write_text(text)
    before = _tree(usb)
    r = run_cli("edgetl", "convert", small_run, "--fp32", "--out", usb, *(["--force"] if force else []))
    line = _one_error_line(r)
    assert str(usb) in line and "did not write" in line and "--out" in line
    assert _tree(usb) == before


def test_convert_into_an_edgetl_deploy_folder_holding_a_user_file_is_refused(deployed, small_run, tmp_path):
    out = tmp_path / "deploy"
    shutil.copytree(deployed, out)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    line = _one_error_line(run_cli("edgetl", "convert", small_run, "--fp32", "--force", "--out", out))
    assert "notes.txt" in line and _tree(out) == before


# -- 2. never the run itself, a folder inside it, or a parent of it -------------------------------

@pytest.mark.parametrize("where", ["run", "inside", "parent"])
def test_convert_out_overlapping_the_run_is_refused(small_run, tmp_path, where):
    run = _copy_run(small_run, tmp_path / "runs" / "run")
    out = {"run": run, "inside": run / "plots", "parent": tmp_path / "runs"}[where]
    before = _tree(tmp_path)
    line = _one_error_line(run_cli("edgetl", "convert", run, "--fp32", "--out", out))
    assert "must not replace" in line
    assert _tree(tmp_path) == before


# -- 3. one model's artifacts per deploy folder ---------------------------------------------------

def test_another_runs_deploy_folder_needs_force_and_is_left_whole_without_it(deployed, small_run, tmp_path):
    a_deploy = tmp_path / "a" / "deploy"
    shutil.copytree(deployed, a_deploy)
    m = json.loads((a_deploy / "manifest.json").read_text())
    (a_deploy / "manifest.json").write_text(json.dumps({**m, "source_run": "/elsewhere/run-a"}))
    before = _tree(a_deploy)
    line = _one_error_line(run_cli("edgetl", "convert", small_run, "--fp32", "--out", a_deploy))
    assert "another run" in line and "--force" in line
    assert _tree(a_deploy) == before


def _retrain(run):
    """The run's model with other head weights, saved in place (as retraining into the same folder does)."""
    code = ("import sys, numpy as np\n"
            "from trainer.evaluate import load_run_model\n"
            "from trainer.model import logits_layer\n"
            "m = load_run_model(sys.argv[1]); layer = logits_layer(m)\n"
            "W, b = layer.get_weights(); layer.set_weights([W * 1.01, b])\n"
            "m.save(sys.argv[1] + '/model.keras')\n")
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_retrained_models_conversion_never_mixes_in_the_old_models_artifacts(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "run")
    assert run_cli("edgetl", "convert", run, "--fp32").returncode == 0
    old = json.loads((run / "deploy" / "manifest.json").read_text())
    _retrain(run)
    r = run_cli("edgetl", "convert", run, "--dynamic")           # same run: no --force needed
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((run / "deploy" / "manifest.json").read_text())
    assert [a["precision"] for a in m["artifacts"]] == ["dynamic"]
    assert m["model_fingerprint"] != old["model_fingerprint"]
    assert all(a["model_fingerprint"] == m["model_fingerprint"] for a in m["artifacts"])
    assert sorted(p.name for p in (run / "deploy").iterdir()) == ["labels.txt", "manifest.json", "model_dynamic.tflite"]


def test_the_same_models_other_precisions_are_kept_and_bound_to_its_fingerprint(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "run")
    assert run_cli("edgetl", "convert", run, "--fp32").returncode == 0
    fp32 = (run / "deploy" / "model_fp32.tflite").read_bytes()
    r = run_cli("edgetl", "convert", run, "--dynamic")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((run / "deploy" / "manifest.json").read_text())
    assert [a["precision"] for a in m["artifacts"]] == ["fp32", "dynamic"]
    assert len({a["model_fingerprint"] for a in m["artifacts"]}) == 1
    assert (run / "deploy" / "model_fp32.tflite").read_bytes() == fp32


# -- 4. labels are the ones the model was trained with ------------------------------------------------

def test_a_run_whose_labels_were_reordered_is_refused(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "run")
    labels = R.read_labels(run)
    (run / R.LABELS).write_text("\n".join(reversed(labels)) + "\n")
    line = _one_error_line(run_cli("edgetl", "convert", run, "--fp32"))
    assert "labels.txt" in line and "order the model was trained with" in line
    assert not (run / "deploy").exists()
    with pytest.raises(UserError, match="order the model was trained with"):
        R.read_labels(run)


# -- 5. other photos never overwrite a run's results ------------------------------------------------

def test_eval_with_a_data_root_of_other_photos_is_refused_and_the_run_is_unchanged(small_run, synth_data, tmp_path):
    from trainer.data.synthetic import generate

    run = _copy_run(small_run, tmp_path / "run")
    other = generate(tmp_path / "other", per_class=30, size=96, seed=7)   # same names, other pixels
    before = _tree(run)
    line = _one_error_line(run_cli("edgetl", "eval", run, "--data-root", other))
    assert "not the ones this run was split from" in line and "--data DIR" in line
    assert _tree(run) == before
    moved = shutil.copytree(synth_data, tmp_path / "moved")          # the same photos moved: accepted
    assert run_cli("edgetl", "eval", run, "--data-root", moved).returncode == 0


def test_eval_of_two_folders_with_the_same_name_writes_two_reports(small_run, synth_data, tmp_path):
    run = _copy_run(small_run, tmp_path / "run")
    for side in ("A", "B"):
        shutil.copytree(synth_data, tmp_path / side / "photos")
        assert run_cli("edgetl", "eval", run, "--data", tmp_path / side / "photos").returncode == 0
    reports = sorted(p.name for p in (run / "plots").iterdir() if p.name.startswith("data_photos"))
    assert len(reports) == 2
    m = R.read_json(run / R.METRICS)
    assert f"data:{tmp_path / 'A' / 'photos'}" in m and f"data:{tmp_path / 'B' / 'photos'}" in m


# -- 6. many files are staged; a failed start leaves a reusable run folder --------------------------

def test_a_killed_data_synth_leaves_no_partial_dataset(tmp_path):
    out = tmp_path / "synth"
    p = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "data", "synth", str(out), "--per-class", "3000",
                          "--size", "64"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".synth.staging-*/*/*.jpg")):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists()
    r = run_cli("edgetl", "data", "synth", out, "--per-class", "2", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dotted", "leopard", "striped"]
    assert not list(tmp_path.glob(".synth.staging-*"))                  # the killed run's stage is gone


def test_a_non_utf8_file_name_is_one_line_and_leaves_no_run_folder(synth_data, tmp_path):
    from tests.test_mixed_precision import W035

    data = shutil.copytree(synth_data, tmp_path / "data")
    (data / "dotted").joinpath(os.fsdecode(b"caf\xe9.jpg")).write_bytes((data / "dotted" / "dotted_0000.jpg").read_bytes())
    args = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", W035]
    line = _one_error_line(run_cli("edgetl", "train", data, "--out", tmp_path / "run", *args))
    assert "not valid UTF-8" in line and "rename" in line
    assert not (tmp_path / "run").exists()


def test_a_run_folder_left_by_a_failed_start_is_reused(synth_data, tmp_path):
    from tests.test_mixed_precision import W035

    run = tmp_path / "run"
    (run / R.SPLIT).mkdir(parents=True)
    (run / R.STATE).write_text(json.dumps({"phase": "started"}))
    r = run_cli("edgetl", "train", synth_data, "--out", run, "--backbone", "mobilenet_v2", "--alpha", "0.35",
                "--size", "96", "--weights", W035)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "failed start" in r.stderr and (run / R.MODEL).is_file()


# -- 7. out-of-range settings are refused by the config that owns them ---------------------------

@pytest.mark.parametrize("option, value, says", [
    ("--lr", "-1", "--lr -1: must be > 0"),
    ("--label-smoothing", "2", "--label-smoothing 2: must be 0 <= x < 1"),
    ("--dropout", "1.5", "--dropout 1.5: must be 0 <= x < 1"),
    ("--l2", "nan", "--l2 nan: must be >= 0"),
    ("--fractions", "nan,0.5,0.5", "--fractions nan,0.5,0.5: must be >= 0"),
])
def test_out_of_range_train_options_are_one_line_and_write_nothing(synth_data, tmp_path, option, value, says):
    line = _one_error_line(run_cli("edgetl", "train", synth_data, "--out", tmp_path / "run", option, value))
    assert says in line
    assert not (tmp_path / "run").exists()


def test_train_help_states_each_range():
    from click.testing import CliRunner

    from edgetl.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output.split())
    assert "dropout before the dense layer. [0 <= x < 1]" in text and "learning rate. [> 0]" in text


def test_dream_with_a_nan_weight_and_attack_with_eps_300_are_one_line(small_run, tmp_path):
    line = _one_error_line(run_cli("edgetl", "dream", small_run, "dotted", "--tv-weight", "nan",
                                   "--out", tmp_path / "d"))
    assert "--tv-weight nan" in line and not (tmp_path / "d").exists()
    line = _one_error_line(run_cli("edgetl", "attack", small_run, SAMPLES / "cat.jpg", "--eps", "300"))
    assert "at most 255/255" in line


def test_edge_serve_refuses_a_max_body_too_small_for_any_request(deployed):
    from click.testing import CliRunner

    from edge_runtime.serve.cli import serve as main

    r = CliRunner().invoke(main, [str(deployed), "--max-body", "0.1"])
    assert r.exit_code == 2 and "at least 1KB" in r.output


# -- 8. the bytes verified are the bytes that run ---------------------------------------------------

def test_a_model_file_truncated_after_loading_does_not_crash_the_classifier(deployed, tmp_path):
    """LiteRT memory-maps a model it loads from a path: truncating the file then kills the process
    with SIGBUS on the next invoke. The device loads the very bytes whose sha256 it checked."""
    d = shutil.copytree(deployed, tmp_path / "d")
    code = ("import sys, pathlib\n"
            "from edge_runtime import Classifier\n"
            "d = pathlib.Path(sys.argv[1]); clf = Classifier(d, precision='fp32')\n"
            "before = clf.classify(sys.argv[2], top_k=1)\n"
            "open(d / 'model_fp32.tflite', 'r+b').truncate(0)   # cp over it, caught half-way\n"
            "assert clf.classify(sys.argv[2], top_k=1) == before\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code, str(d), str(SAMPLES / "daisy.jpg")], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_a_model_file_replaced_between_check_and_load_is_never_run(deployed, tmp_path, monkeypatch):
    from edge_runtime import Classifier
    from edge_runtime import classifier as C

    d = shutil.copytree(deployed, tmp_path / "d")
    read = C._read_model

    def read_then_swap(path):        # the check reads the old bytes; a swap lands right after
        blob = read(path)
        path.write_bytes(b"TFL3 not a model")
        return blob
    monkeypatch.setattr(C, "_read_model", read_then_swap)
    clf = Classifier(d, precision="fp32")
    assert clf.classify(str(SAMPLES / "daisy.jpg"), top_k=1)[0][0]      # runs what was verified


# -- 9. folders follow the umask ------------------------------------------------------------------

def test_a_deploy_folder_follows_the_umask(small_run, tmp_path):
    old = os.umask(0o022)
    try:
        r = run_cli("edgetl", "convert", small_run, "--fp32", "--out", tmp_path / "d")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


# -- the verification gate judges paired predictions ----------------------------------------------

def _pairs(n=73, lost=0, gained=0, float_wrong=3):
    """Labels, float and int8 predictions over ``n`` photos of 12 classes."""
    y = np.arange(n) % 12
    f = y.copy()
    f[:float_wrong] = (y[:float_wrong] + 1) % 12
    q = f.copy()
    q[float_wrong:float_wrong + lost] = (y[float_wrong:float_wrong + lost] + 1) % 12   # int8 wrong, float right
    q[:gained] = y[:gained]                                                            # int8 right, float wrong
    return y, f, q


def test_one_photo_lost_of_73_passes_the_default_gate():
    from converter.gate import judge

    g = judge(*_pairs(lost=1), max_drop=1.0, photos="test")
    assert g["drop_points"] == pytest.approx(1.37, abs=0.01) and g["lost"] == 1 and g["gained"] == 0
    assert g["p_value"] == 0.5 and g["verdict"] == "passed"


def test_a_model_losing_many_photos_of_73_fails_the_gate():
    from converter.gate import judge

    g = judge(*_pairs(lost=8), max_drop=1.0, photos="test")
    assert g["p_value"] < 0.01 and g["verdict"] == "failed"
    assert judge(*_pairs(lost=8, gained=3), max_drop=10.0, photos="test")["verdict"] == "passed"   # within budget


def test_mcnemar_p_is_the_exact_binomial_tail():
    from converter.gate import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(1, 0) == 0.5 and mcnemar_p(5, 0) == 1 / 32
    assert mcnemar_p(3, 1) == pytest.approx(5 / 16)


def _damage_int8_head(blob: bytes) -> bytes:
    """The int8 model with its classifier's rows rolled by one class: every answer moves."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    from converter.head_refit import find_head

    head = find_head(blob)
    m = fbu.convert_bytearray_to_object(bytearray(blob))
    t = m.subgraphs[0].tensors
    for i, dtype in ((head.weights, np.int8), (head.bias, np.int32)):
        data = np.frombuffer(bytes(m.buffers[t[i].buffer].data), dtype).reshape(t[i].shape)
        m.buffers[t[i].buffer].data = np.frombuffer(np.roll(data, 1, axis=0).tobytes(), np.uint8)
    return bytes(fbu.convert_object_to_bytearray(m))


def test_a_damaged_int8_fails_the_gate_says_the_ways_on_and_is_never_the_default(small_run, tmp_path, monkeypatch):
    from converter import convert as C
    from edge_runtime import Classifier

    original = C._artifact_bytes

    def damaged(src, prec, *a, **kw):
        blob, choice = original(src, prec, *a, **kw)
        return (_damage_int8_head(blob) if prec == "int8" else blob), choice
    monkeypatch.setattr(C, "_artifact_bytes", damaged)
    out = tmp_path / "d"
    with pytest.raises(UserError) as e:   # plain int8 (no recovery): the damage is the point, not the recovery
        C.convert(small_run, ["fp32", "int8"], out=out, calibration_samples=30, int8_recovery=False)
    assert "McNemar" in str(e.value) and "--max-drop" in str(e.value) and "fp32" in str(e.value)
    m = json.loads((out / "manifest.json").read_text())
    v = {a["precision"]: a["verification"] for a in m["artifacts"]}
    assert v["int8"]["status"] == "failed" and v["int8"]["gate"]["verdict"] == "failed"
    assert v["int8"]["gate"]["photos"] == "test+val"                  # a small split: validation joins
    assert v["fp32"]["status"] == "passed" and m["default"] == "fp32"
    assert Classifier(out).precision == "fp32"
    monkeypatch.setattr(C, "_artifact_bytes", original)                # the retry replaces edgetl's own files
    m = C.convert(small_run, ["fp32", "int8"], out=out, calibration_samples=30, int8_recovery=False)
    assert m["default"] == "int8"


def test_edge_serve_stays_up_through_1000_in_place_overwrites_of_its_model(deployed, tmp_path):
    """`cp other.tflite DEPLOY/model_int8.tflite` (an in-place overwrite) while /load and requests
    flow: before, LiteRT memory-mapped the file being truncated and the server died of SIGBUS."""
    import threading

    import httpx

    from tests.serving import Server

    deploy = shutil.copytree(deployed, tmp_path / "deploy")
    target = deploy / "model_int8.tflite"
    good, other = target.read_bytes(), (deploy / "model_fp32.tflite").read_bytes()
    srv = Server(deploy, "--threads", "1", "--name", "m")
    statuses = {"classify": [], "load": []}
    stop = threading.Event()

    def overwrite_in_place():
        for k in range(1000):
            with open(target, "r+b") as f:    # what cp does to an existing file: truncate, then write
                f.truncate(0)
                data = good if k % 2 else other
                for i in range(0, len(data), 65536):
                    f.write(data[i:i + 65536])
                    f.flush()
        with open(target, "r+b") as f:
            f.truncate(0)
            f.write(good)
        stop.set()

    def traffic(kind):
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while not stop.is_set():
                if kind == "load":
                    statuses[kind].append(c.post("/v2/repository/models/m/load").status_code)
                else:
                    statuses[kind].append(c.post("/v1/classify", content=PHOTO_BYTES,
                                                 headers={"Content-Type": "image/jpeg"}).status_code)
    try:
        threads = [threading.Thread(target=overwrite_in_place)] + [threading.Thread(target=traffic, args=(k,))
                                                                    for k in ("load", "classify")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert srv.proc.poll() is None, srv.output()                        # still up
        assert set(statuses["classify"]) <= {200, 503} and statuses["classify"], statuses["classify"][:20]
        assert set(statuses["load"]) <= {200, 400} and statuses["load"]     # a half-copied file is refused
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v2/repository/models/m/load").status_code == 200   # the good bytes swap in
    finally:
        stop.set()
        srv.stop()


PHOTO_BYTES = (SAMPLES / "daisy.jpg").read_bytes()


# -- the rest of the reported tracebacks: one line each, exit 2 ----------------------------------

@pytest.mark.parametrize("args, says", [
    (["data", "synth", "{tmp}/s", "--size", "100000"], "--size 16-4096"),
    (["data", "synth", "{tmp}/s", "--seed", "-1"], "--seed 0 or more"),
    (["runs", "compare", "{run}", "{run}", "--max-images", "-1"], "--max-images -1"),
    (["bench", "--data", "{tmp}", "--backbones", "mobilenet_v2:0.35@96", "--precisions", "int4"], "int4"),
    (["bench", "--data", "{tmp}", "--backbones", ",,,"], "names no backbone"),
    (["convert", "{run}", "--out", "."], "must not replace"),
], ids=["synth-size", "synth-seed", "compare-max-images", "bench-int4", "bench-no-backbones", "convert-out-dot"])
def test_reported_bad_options_are_one_line(small_run, tmp_path, monkeypatch, args, says):
    from click.testing import CliRunner

    from edgetl.cli import cli

    monkeypatch.chdir(small_run.parent)           # `--out .` is then the run's parent folder
    r = CliRunner().invoke(cli, [a.format(tmp=tmp_path, run=small_run) for a in args])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and lines[-1].startswith("error: ") and says in lines[-1], r.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://example.org/", "http://host:99999"])
def test_edge_predict_with_a_bad_server_url_is_one_line_without_waiting(url):
    from click.testing import CliRunner

    from edge_runtime.cli import cli

    t = time.time()
    r = CliRunner().invoke(cli, ["--server", url, str(PHOTO_PATH)])
    assert r.exit_code == 2 and r.output.strip().startswith("error: ") and url in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and time.time() - t < 10


def test_edge_serve_with_a_file_that_is_not_a_tls_key_is_one_line(deployed, tmp_path):
    from click.testing import CliRunner

    from edge_runtime.serve.cli import serve as main

    junk = tmp_path / "key.pem"
    junk.write_text("not a key\n")
    r = CliRunner().invoke(main, [str(deployed), "--ssl-keyfile", str(junk), "--ssl-certfile", str(junk)])
    assert r.exit_code == 2 and "not a usable TLS key and certificate pair" in r.output, r.output


PHOTO_PATH = SAMPLES / "daisy.jpg"


def test_report_commands_never_write_into_a_folder_of_user_files(small_run, tmp_path):
    """The output-folder policy (edge_runtime.outdir) of every command writing a report folder."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "compare.md").write_text("my notes")
    before = _tree(usb)
    r = CliRunner().invoke(cli, ["runs", "compare", str(small_run), str(small_run), "--out", str(usb)])
    assert r.exit_code == 2 and "did not write" in r.output and _tree(usb) == before, r.output
    for _ in range(2):   # a folder it made itself is written again
        r = CliRunner().invoke(cli, ["runs", "compare", str(small_run), str(small_run), "--out", str(tmp_path / "c")])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["explain", str(small_run), str(PHOTO_PATH), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "edgetl insight" in r.output            # another command's folder
