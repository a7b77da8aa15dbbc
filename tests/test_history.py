"""Run history: `edgetl runs` lists runs from their files, `edgetl runs compare` puts runs side by
side (per class only on the same test files), training writes TensorBoard logs, and MLflow
tracking copies a run into a real SQLite store without ever risking the run directory."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WEIGHTS, run_cli

pytestmark = pytest.mark.slow
SMALL = ("--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96",
         "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5")
NO_ENV_TRACKING = {"MLFLOW_TRACKING_URI": ""}
UNREACHABLE = "http://127.0.0.1:9"   # the discard port: nothing listens on loopback


def _train(data, out, *extra):
    r = run_cli("edgetl", "train", data, "--out", out, *SMALL, *extra, env=NO_ENV_TRACKING)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def history_root(tmp_path_factory, synth_data, small_run):
    """Three runs on the same split (the shared softmax run, a linear-SVM head, a fine-tuned
    run), a fourth on another split, and the MLflow store the fine-tuned run was logged to."""
    root = tmp_path_factory.mktemp("history")
    store = f"sqlite:///{root / 'mlflow.db'}"
    runs = root / "runs"
    svm = _train(synth_data, runs / "svm", "--head", "linear-svm", "--track", UNREACHABLE)
    _train(synth_data, runs / "ft", "--head-solver", "sgd", "--epochs", "5",
           "--fine-tune", "--fine-tune-blocks", "2", "--fine-tune-epochs", "2", "--track", store)
    r = run_cli("edgetl", "convert", runs / "ft", "--int8", "--track", store, env=NO_ENV_TRACKING)
    assert r.returncode == 0, r.stderr[-3000:]
    _train(synth_data, root / "other" / "seed1", "--seed", "1")
    return {"root": root, "runs": runs, "small": small_run, "svm": runs / "svm", "ft": runs / "ft",
            "other": root / "other" / "seed1", "store": store, "svm_stderr": svm.stderr}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["test"]


# ------------------------------------------------------------------------- edgetl runs
def test_runs_lists_the_three_runs_with_the_numbers_in_their_files(history_root):
    h = history_root
    r = run_cli("edgetl", "runs", h["runs"], h["small"].parent, "--json")
    assert r.returncode == 0, r.stderr
    rows = {Path(x["run"]).name: x for x in json.loads(r.stdout)}
    assert set(rows) == {"svm", "ft", "run"}
    expect = {"run": (h["small"], "softmax", False), "svm": (h["svm"], "linear-svm", False),
              "ft": (h["ft"], "softmax", True)}
    for name, (run, head, tuned) in expect.items():
        row, m = rows[name], _metrics(run)
        assert (row["accuracy"], row["class_avg_accuracy"], row["n_test"]) == \
               (m["accuracy"], m["class_avg_accuracy"], m["n"])
        assert (row["backbone"], row["alpha"], row["size"]) == ("mobilenet_v2", 0.35, 96)
        assert (row["head"], row["fine_tuned"], row["status"]) == (head, tuned, "done")
    assert len({x["group"] for x in rows.values()}) == 1   # same data, same test files: comparable


def test_runs_shows_each_deploy_artifact_with_its_verified_accuracy_size_and_latency(history_root):
    ft = history_root["ft"]
    r = run_cli("edge-predict", ft / "deploy", "--benchmark", "--runs", "3", "--threads", "1",
                "--precision", "int8")
    assert r.returncode == 0, r.stderr
    bench = json.loads((ft / "deploy" / "benchmark.json").read_text())
    man = json.loads((ft / "deploy" / "manifest.json").read_text())
    int8 = next(a for a in man["artifacts"] if a["precision"] == "int8")
    from trainer.runs.history import list_runs
    row = next(x for x in list_runs([history_root["runs"]]) if Path(x.run).name == "ft")
    art = next(a for a in row.artifacts if a.precision == "int8")
    assert art.accuracy == int8["verification"]["accuracy"]
    assert art.size_mb == round(int8["bytes"] / 1e6, 3)
    assert art.latency_ms == bench["rows"][0]["end_to_end_ms"]["median"] and art.latency_threads == 1
    table = run_cli("edgetl", "runs", history_root["runs"]).stdout
    assert f"int8 {int8['verification']['accuracy']:.4f}" in table


def test_runs_on_another_test_split_get_another_group_and_a_warning(history_root):
    h = history_root
    r = run_cli("edgetl", "runs", h["runs"], h["other"], "--sort", "accuracy")
    assert r.returncode == 0, r.stderr
    from trainer.runs.history import list_runs
    rows = {Path(x.run).name: x.group for x in list_runs([h["runs"], h["other"]])}
    assert rows["svm"] == rows["ft"] != rows["seed1"]
    assert "not comparable" in r.stdout


def test_runs_csv_has_a_row_per_run_and_columns_per_precision(history_root):
    import csv
    import io
    r = run_cli("edgetl", "runs", history_root["runs"], "--csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert sorted(Path(x["run"]).name for x in rows) == ["ft", "svm"]
    ft = next(x for x in rows if x["run"].endswith("ft"))
    assert float(ft["accuracy"]) == _metrics(history_root["ft"])["accuracy"] and ft["int8_accuracy"]


def test_content_fingerprints_follow_the_photos_not_the_folder(tmp_path, synth_data):
    from trainer.data import load_dataset, make_split
    from trainer.data.split import content_fingerprints
    copy = shutil.copytree(synth_data, tmp_path / "copy")
    a = make_split(load_dataset(str(synth_data)), seed=0)
    b = make_split(load_dataset(str(copy)), seed=0)
    assert content_fingerprints(a) == content_fingerprints(b)          # moved data: same fingerprints
    rel = b["test"][0][0]
    (copy / rel).write_bytes((copy / rel).read_bytes() + b"\0")        # one test photo changes
    changed = content_fingerprints(b)
    assert changed["test"] != content_fingerprints(a)["test"] and changed["data"] != content_fingerprints(a)["data"]
    other_seed = make_split(load_dataset(str(synth_data)), seed=1)
    fa, fo = content_fingerprints(a), content_fingerprints(other_seed)
    assert fo["data"] == fa["data"] and fo["test"] != fa["test"]       # same photos, other test split


# ------------------------------------------------------------------------- edgetl runs compare
def test_best_value_marks_on_a_hand_checked_case():
    from trainer.runs.compare import best_indices
    assert best_indices([0.90, 0.95, 0.93]) == [1]
    assert best_indices([0.95, 0.90, 0.95]) == [0, 2]        # a tie marks both
    assert best_indices([0.9, 0.9]) == []                     # nothing is better when all are equal
    assert best_indices([None, 0.8]) == [1]
    assert best_indices([0.3, 0.1], higher_is_better=False) == [1]


def test_compare_marks_the_better_per_class_value_from_each_runs_metrics(history_root, tmp_path):
    from trainer.runs.compare import compare_runs, format_markdown
    runs = [history_root["small"], history_root["svm"], history_root["ft"]]
    cmp = compare_runs(runs, out=tmp_path / "cmp")
    assert cmp.comparable
    tests = [_metrics(r) for r in runs]
    for c in tests[0]["per_class"]:
        for k in ("accuracy", "precision", "recall"):
            vals = [t["per_class"][c][k] for t in tests]
            want = [] if len(set(vals)) == 1 else [i for i, v in enumerate(vals) if v == max(vals)]
            assert cmp.per_class_best[c][k] == want, (c, k, vals)
    assert "train.head" in cmp.config_diff and "train.fine_tune" in cmp.config_diff
    assert "train.out" not in cmp.config_diff and "train.alpha" not in cmp.config_diff
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md == format_markdown(cmp) and "## Per class" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000


def test_compare_lists_the_images_one_run_gets_right_and_the_other_wrong(history_root):
    from trainer.runs.compare import compare_runs
    a, b = history_root["svm"], history_root["ft"]
    cmp = compare_runs([a, b])

    def right(run):
        z = np.load(run / "predictions" / "test.npz")
        return {Path(str(f)).name: bool(p == t) for f, p, t in zip(z["files"], z["probs"].argmax(1), z["y"])}
    ra, rb = right(a), right(b)
    d = cmp.disagreements[0]
    assert sorted(Path(x["file"]).name for x in d["a_right_b_wrong"]) == sorted(f for f in ra if ra[f] and not rb[f])
    assert sorted(Path(x["file"]).name for x in d["b_right_a_wrong"]) == sorted(f for f in ra if rb[f] and not ra[f])


def test_compare_refuses_per_class_for_runs_on_different_test_splits(history_root, tmp_path):
    r = run_cli("edgetl", "runs", "compare", history_root["small"], history_root["other"], "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "per-class comparison refused: the runs were scored on different test files" in r.stderr
    assert "same --seed and --fractions" in r.stderr
    out = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert out["comparable"] is False and out["per_class"] == {} and out["disagreements"] == []
    assert "## Per class" not in r.stdout and "accuracy" in r.stdout     # overall numbers still shown
    assert not (tmp_path / "c" / "compare.png").exists()


def test_compare_needs_two_finished_runs(tmp_path, small_run):
    r = run_cli("edgetl", "runs", "compare", small_run, tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a run directory" in r.stderr


# ------------------------------------------------------------------------- TensorBoard
def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a folder's event files, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray
    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()[TENSORS]}


def test_tensorboard_logs_have_per_epoch_loss_and_accuracy_for_both_phases(history_root):
    ft = history_root["ft"]
    hist = json.loads((ft / "history.json").read_text())
    for phase in ("head", "fine_tune"):
        for part, prefix in (("train", ""), ("validation", "val_")):
            s = _tb_scalars(ft / "logs" / phase / part)
            for metric in ("loss", "accuracy"):
                want = hist[phase][prefix + metric]
                got = s[f"epoch_{metric}"]
                assert [step for step, _ in got] == list(range(len(want))), (phase, part, metric)
                assert np.allclose([v for _, v in got], want, rtol=1e-5), (phase, part, metric)


def test_exactly_solved_head_logs_its_l2_curve_for_tensorboard(small_run):
    s = _tb_scalars(small_run / "logs" / "head" / "l2_selection")
    sel = json.loads((small_run / "metrics.json").read_text())["head"]
    assert len(s["heldout_accuracy"]) == len(sel["grid"])
    assert s["chosen_l2"][0][1] == pytest.approx(sel["l2"])


# ------------------------------------------------------------------------- MLflow
def test_mlflow_store_holds_params_curves_metrics_plots_and_the_verified_int8_model(history_root, tmp_path):
    from mlflow.tracking import MlflowClient
    ft = history_root["ft"]
    client = MlflowClient(tracking_uri=history_root["store"])
    exp = client.get_experiment_by_name("edgetl")
    runs = client.search_runs([exp.experiment_id])
    train = next(r for r in runs if r.data.tags.get("edgetl.kind") == "train")
    conv = next(r for r in runs if r.data.tags.get("edgetl.kind") == "convert")
    assert train.info.run_id == json.loads((ft / "tracking.json").read_text())["run_id"]
    assert train.info.status == "FINISHED"
    p = train.data.params
    assert (p["train.backbone"], p["train.alpha"], p["train.fine_tune"], p["backbone.size"]) == \
           ("mobilenet_v2", "0.35", "True", "96")
    assert train.data.tags["backbone"] == "mobilenet_v2 0.35@96"
    hist = json.loads((ft / "history.json").read_text())
    for phase in ("head", "fine_tune"):
        got = client.get_metric_history(train.info.run_id, f"{phase}/val_accuracy")
        assert [m.step for m in sorted(got, key=lambda m: m.step)] == list(range(1, len(hist[phase]["val_accuracy"]) + 1))
    assert train.data.metrics["test/accuracy"] == pytest.approx(_metrics(ft)["accuracy"])
    plots = {Path(f.path).name for f in client.list_artifacts(train.info.run_id, "plots")}
    assert {"confusion_matrix.png", "roc.png", "history.png"} <= plots
    assert conv.data.tags["mlflow.parentRunId"] == train.info.run_id
    man = json.loads((ft / "deploy" / "manifest.json").read_text())
    int8 = next(a for a in man["artifacts"] if a["precision"] == "int8")
    local = client.download_artifacts(conv.info.run_id, f"deploy/{int8['file']}", str(tmp_path))
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == int8["sha256"]
    assert conv.data.metrics["int8/accuracy"] == pytest.approx(int8["verification"]["accuracy"])


def test_unreachable_tracking_server_warns_once_and_the_run_is_complete(history_root):
    svm, err = history_root["svm"], history_root["svm_stderr"]
    warnings = [l for l in err.splitlines() if "MLflow tracking failed" in l]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and UNREACHABLE in warnings[0]
    assert json.loads((svm / "state.json").read_text())["phase"] == "done"
    for f in ("model.keras", "metrics.json", "config.json", "labels.txt", "plots/confusion_matrix.png",
              "predictions/test.npz"):
        assert (svm / f).exists(), f
    assert not (svm / "tracking.json").exists()


def test_eval_with_tracking_adds_its_metrics_to_the_training_run(history_root, synth_data):
    from mlflow.tracking import MlflowClient
    ft, store = history_root["ft"], history_root["store"]
    r = run_cli("edgetl", "eval", ft, "--data", synth_data, "--track", store, env=NO_ENV_TRACKING)
    assert r.returncode == 0, r.stderr
    run_id = json.loads((ft / "tracking.json").read_text())["run_id"]
    m = MlflowClient(tracking_uri=store).get_run(run_id).data.metrics
    report = json.loads((ft / "metrics.json").read_text())[f"data:{synth_data}"]
    assert m[f"data/{Path(synth_data).name}/accuracy"] == pytest.approx(report["accuracy"])


def test_with_tracking_off_no_tracker_call_loads_mlflow():
    """Training calls the tracker whether or not tracking is on; off, that must cost nothing
    (importing MLflow is ~0.4 s inside the timed training path)."""
    import os
    import subprocess
    import sys

    code = ("import sys; from trainer.runs.tracking import Tracker; t = Tracker(None); "
            "t.start('.', 'train'); t.params({'a': 1}); t.metrics({'a': 1.0}); "
            "t.series('head', {'loss': [1.0, 0.5]}); t.artifact('.'); t.end(); "
            "print('mlflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
