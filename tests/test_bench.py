"""`edgetl bench`: report files, Pareto front, budget, flagged traps, device merge."""
import csv
import json
import shutil

import pytest

from benchmarks.report import best_under_budget, markdown, pareto, traps
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def bench_out(small_run, synth_data, tmp_path_factory):
    """A bench of the small run (reused, so nothing is retrained) in fp32 + int8."""
    tmp = tmp_path_factory.mktemp("bench")
    run = shutil.copytree(small_run, tmp / "run", ignore=shutil.ignore_patterns("deploy"))
    out = tmp / "report"
    r = run_cli("edgetl", "bench", "--data", synth_data, "--backbones", "mobilenet_v2:0.35@96",
                "--precisions", "fp32,int8", "--reuse", run, "--out", out, "--budget-ms", "1000")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_report_has_table_csv_json_and_plot(bench_out):
    out, stdout = bench_out
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.csv", "report.json", "accuracy_vs_latency.png"}
    assert (out / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["precision"] for r in rows] == ["fp32", "int8"] and all(r["status"] == "ok" for r in rows)
    assert "| backbone | size | precision |" in stdout and "machine:" in stdout and "split 80/10/10 seed 0" in stdout


def test_rows_carry_accuracy_latency_and_delegation(bench_out):
    rep = json.loads((bench_out[0] / "report.json").read_text())
    assert rep["threads"][0] == 1
    for r in rep["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["size_mb"] > 0 and isinstance(r["fully_delegated"], bool)
        for t in map(str, rep["threads"]):
            lat = r["latency"][t]
            assert lat["raw_ms"]["runs"] == 50 and lat["raw_ms"]["median"] <= lat["raw_ms"]["p90"]
            assert lat["end_to_end_ms"]["median"] > 0


def test_budget_names_the_most_accurate_artifact_within_it(bench_out):
    rep = json.loads((bench_out[0] / "report.json").read_text())
    best = best_under_budget(rep, 1000.0)
    assert best["accuracy"] == max(r["accuracy"] for r in rep["rows"])
    assert "Most accurate within budget" in bench_out[1]
    assert best_under_budget(rep, 1e-6) is None


@pytest.fixture(scope="module")
def device_report(bench_out):
    """`edge-predict DEPLOY --benchmark --eval RUN --json` of the first row's deploy folder, as a
    device writes it: latency and the device's own accuracy on the run's test photos."""
    out, _ = bench_out
    rep = json.loads((out / "report.json").read_text())
    deploy = rep["rows"][0]["file"].rsplit("/", 1)[0]
    r = run_cli("edge-predict", deploy, "--benchmark", "--runs", "7", "--eval", rep["rows"][0]["run"], "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_merge_uses_the_devices_latency_and_keeps_box_accuracy(bench_out, device_report, tmp_path):
    out, _ = bench_out
    rep = json.loads((out / "report.json").read_text())
    dev = tmp_path / "pi5.json"
    dev.write_text(json.dumps(device_report))
    r = run_cli("edgetl", "bench", "merge", out / "report.json", dev, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr[-2000:]
    merged = json.loads((tmp_path / "merged" / "pi5" / "report.json").read_text())
    assert [m["accuracy"] for m in merged["rows"]] == [x["accuracy"] for x in rep["rows"]]
    assert all(m["latency"]["1"]["raw_ms"]["runs"] == 7 for m in merged["rows"])
    # the device's own accuracy beside the box's: this "device" is this machine, so they agree
    for m in merged["rows"]:
        assert abs(m["device_accuracy"] - m["accuracy"]) <= 1 / m["test_n"] + 1e-9
    table = (tmp_path / "merged" / "pi5" / "report.md").read_text()
    assert "| top1 | device_top1 |" in table and "device_top1" in (tmp_path / "merged" / "pi5" / "report.csv").read_text()
    assert "latency-only" not in table            # no such rows here: no note about them


def test_a_device_benchmark_without_eval_adds_no_accuracy_column(bench_out, tmp_path):
    from benchmarks.report import columns, merge

    rep = json.loads((bench_out[0] / "report.json").read_text())
    device = {"machine": rep["machine"], "date": rep["date"], "method": {"runs": 7}, "rows": [
        {"sha256": r["sha256"], "threads": 1, "raw_ms": {"median": 1.0}, "end_to_end_ms": {"median": 2.0}, "fps": 500}
        for r in rep["rows"]]}
    assert "device_top1" not in columns(merge(rep, device))


def test_backbone_rows_take_their_own_weights():
    from benchmarks.bench import parse_rows

    rows = parse_rows("mobilenet_v2:0.35@128=/w/mnv2_035.h5, efficientnet_lite0@224,mobilenet_v3_small=none",
                      default_weights="imagenet")
    assert [(r.backbone, r.alpha, r.size, r.weights) for r in rows] == [
        ("mobilenet_v2", 0.35, 128, "/w/mnv2_035.h5"), ("efficientnet_lite0", None, 224, "imagenet"),
        ("mobilenet_v3_small", None, None, "none")]


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 0.80, 0), (2.0, 0.90, 1), (3.0, 0.85, 2), (4.0, 0.95, 3), (1.5, 0.70, 4)]
    assert pareto(pts) == {0, 1, 3}


def _rep(int8_ms, fp32_ms, not_delegated=(), fp32_p90=None):
    def row(prec, ms, nd=(), p90=None):
        return {"row": "mobilenet_v3_small-224", "backbone": "mobilenet_v3_small", "precision": prec, "status": "ok",
                "accuracy": .5, "latency": {"1": {"raw_ms": {"median": ms, "p90": p90 or ms}, "end_to_end_ms":
                                                  {"median": ms + 1, "p90": ms + 1}, "fps": 1}},
                "not_delegated": list(nd), "fully_delegated": not nd, "ops": [], "size_mb": 1.0, "file": "x"}
    return {"threads": [1], "rows": [row("fp32", fp32_ms, p90=fp32_p90), row("int8", int8_ms, not_delegated)],
            "machine": {"cpu": "x", "cores": 1, "system": "L", "machine": "m", "python": "3", "runtime": "r"},
            "data": "d",
            "date": "now", "method": {"runs": 50, "warmup": 5, "process": "one"}, "config": {}}


def test_int8_slower_than_fp32_is_flagged_with_the_undelegated_ops():
    notes = traps(_rep(int8_ms=9.0, fp32_ms=5.0, not_delegated=["HARD_SWISH"]))
    assert any("int8 is slower than fp32" in n and "HARD_SWISH" in n for n in notes)
    assert not any("slower" in n for n in traps(_rep(int8_ms=3.0, fp32_ms=5.0)))
    assert "## Flags" in markdown(_rep(int8_ms=9.0, fp32_ms=5.0, not_delegated=["HARD_SWISH"]))


def test_int8_slower_with_only_the_input_quantize_outside_blames_the_kernels_not_delegation():
    notes = [n for n in traps(_rep(int8_ms=9.0, fp32_ms=5.0, not_delegated=["QUANTIZE"])) if "slower" in n]
    assert len(notes) == 1 and "every compute op is in XNNPACK" in notes[0]


@pytest.mark.parametrize("isa, says", [
    ("AVX2 only, no VNNI", "int8 is no faster than fp32 here"),
    ("ARM NEON, no int8 dot-product", "int8 is no faster than fp32 here"),
    ("AVX-512 VNNI", "more likely noise"),
    ("int8 dot-product", "more likely noise"),
])
def test_the_int8_explanation_comes_from_the_cpus_instructions(isa, says):
    rep = _rep(int8_ms=9.0, fp32_ms=5.0, not_delegated=["QUANTIZE"])
    rep["machine"]["int8_instructions"] = isa
    notes = [n for n in traps(rep) if "slower" in n]
    assert len(notes) == 1 and isa in notes[0] and says in notes[0]
    assert f"int8 instructions: {isa}" in markdown(rep)


def test_cpu_int8_features_are_read_from_cpuinfo():
    from edge_runtime.benchmark import int8_instructions
    assert int8_instructions("flags\t: fma avx2 avx512f avx512_vnni") == "AVX-512 VNNI"
    assert int8_instructions("flags\t: fma avx2 avx_vnni") == "AVX-VNNI"
    assert int8_instructions("flags\t: fma avx2") == "AVX2 only, no VNNI"
    assert int8_instructions("Features\t: fp asimd asimddp i8mm") == "int8 dot-product + i8mm"
    assert int8_instructions("Features\t: fp asimd") == "ARM NEON, no int8 dot-product"


def test_an_end_to_end_median_below_the_raw_median_is_called_noise():
    rep = _rep(int8_ms=3.0, fp32_ms=5.0)
    rep["rows"][0]["latency"]["1"]["end_to_end_ms"]["median"] = 4.0      # below fp32's raw 5.0
    assert any("below the raw invoke median" in n and "noise" in n for n in traps(rep))
    assert not any("below the raw" in n for n in traps(_rep(int8_ms=3.0, fp32_ms=5.0)))


def test_a_gap_within_fp32s_own_spread_is_not_called_slower():
    assert not any("slower" in n for n in traps(_rep(int8_ms=5.8, fp32_ms=5.0, fp32_p90=6.0)))
    assert any("slower" in n for n in traps(_rep(int8_ms=6.5, fp32_ms=5.0, fp32_p90=6.0)))


def test_unknown_preset_is_a_one_line_error():
    r = run_cli("edgetl", "bench", "--preset", "nope")
    assert r.returncode == 2 and "ci" in r.stderr and "full" in r.stderr


def test_latency_only_rows_are_not_gated_on_accuracy_but_real_rows_are():
    from benchmarks.bench import BenchConfig, gate

    cfg = BenchConfig(data="d", rows=[], max_int8_drop=1.0)
    lost = {"n": 100, "lost": 10, "gained": 0, "drop_points": 10.0, "p_value": 0.001}
    row = {"precision": "int8", "drop_points": 10.0, "agreement": 0.5, "gate": lost}
    assert gate({**row, "latency_only": True, "weights": "random init"}, cfg) == "ok"
    assert gate({**row, "weights": "imagenet"}, cfg).startswith("verification failed")


def test_a_row_losing_two_photos_of_73_is_not_failed():
    """The bench uses the converter's paired gate: on 73 photos two lost answers (2.7 points) are
    not evidence that int8 is worse (exact McNemar p = 0.25)."""
    from benchmarks.bench import BenchConfig, gate
    from converter.gate import mcnemar_p

    cfg = BenchConfig(data="d", rows=[], max_int8_drop=1.0)
    two = {"n": 73, "lost": 2, "gained": 0, "drop_points": 2.74, "p_value": mcnemar_p(2, 0)}
    assert gate({"precision": "int8", "drop_points": 2.74, "agreement": 0.97, "gate": two, "weights": "imagenet"},
                cfg) == "ok"


def test_report_names_the_command_that_made_it():
    rep = _rep(int8_ms=3.0, fp32_ms=5.0)
    rep["command"] = "edgetl bench --preset full --out x"
    assert "- command: `edgetl bench --preset full --out x`" in markdown(rep)


@pytest.mark.parametrize("make, message", [
    (lambda d: [d], "not a edgetl-device-benchmark/1 file ('a JSON list')"),
    (lambda d: "pi5", "not a edgetl-device-benchmark/1 file ('a JSON str')"),
    (lambda d: {k: v for k, v in d.items() if k != "rows"}, "without 'rows'"),
    (lambda d: {**d, "rows": [{k: v for k, v in r.items() if k != "raw_ms"} for r in d["rows"]]},
     "row 0 lacks sha256/threads/raw_ms"),
    (lambda d: {**d, "rows": [{**r, "sha256": "0" * 64} for r in d["rows"]]}, "none of its artifacts is in"),
])
def test_merge_refuses_what_is_not_a_matching_device_report(bench_out, device_report, tmp_path, make, message):
    dev = tmp_path / "pi5.json"
    dev.write_text(json.dumps(make(device_report)))
    r = run_cli("edgetl", "bench", "merge", bench_out[0] / "report.json", dev, "--out", tmp_path / "merged")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_two_device_files_of_one_name(bench_out, device_report, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "pi5.json").write_text(json.dumps(device_report))
    r = run_cli("edgetl", "bench", "merge", bench_out[0] / "report.json", tmp_path / "a" / "pi5.json",
                tmp_path / "b" / "pi5.json", "--out", tmp_path / "merged")
    assert r.returncode == 2 and "two device files are named 'pi5'" in r.stderr
    assert not (tmp_path / "merged").exists()


# -- reuse keyed on what a row was trained from; a report that survives a crash -------------------

def _bench_cmd(data, out, reuse):
    from tests.conftest import WEIGHTS
    return ["edgetl", "bench", "--data", data, "--backbones", "mobilenet_v2:0.35@96,mobilenet_v2:0.35@64",
            "--weights", WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5", "--precisions", "fp32",
            "--reuse", reuse, "--out", out]


@pytest.fixture(scope="module")
def killed_bench(small_run, synth_data, tmp_path_factory):
    """A two-row bench killed (SIGKILL) while its second row trains, right after the first row's report."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    tmp = tmp_path_factory.mktemp("killed_bench")
    run = shutil.copytree(small_run, tmp / "run", ignore=shutil.ignore_patterns("deploy"))
    out = tmp / "report"
    cmd = _bench_cmd(synth_data, out, run)
    proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli", *map(str, cmd[1:])], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "report.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert (out / "report.json").exists(), err[-3000:]
    return out, cmd


def test_a_killed_bench_keeps_the_rows_it_finished(killed_bench):
    out, _ = killed_bench
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] is False and rep["rows_planned"] == ["mobilenet_v2-a0.35-96", "mobilenet_v2-a0.35-64"]
    assert [(r["row"], r["status"]) for r in rep["rows"]] == [("mobilenet_v2-a0.35-96", "ok")]
    assert "**partial**: 1 of 2 rows finished" in (out / "report.md").read_text()
    assert not list(out.glob("*.tmp*")), "a half-written report file was left"


def test_a_rerun_reuses_rows_whose_data_and_settings_match_and_retrains_changed_ones(killed_bench, tmp_path):
    from trainer.data.synthetic import generate

    out, cmd = killed_bench
    row = out / "runs" / "mobilenet_v2-a0.35-64"
    r = run_cli(*cmd)                                      # finishes the interrupted row
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] is True and [x["status"] for x in rep["rows"]] == ["ok", "ok"]
    trained = (row / "metrics.json").stat().st_mtime_ns

    r = run_cli(*cmd)                                      # same photos, same settings: reused
    assert r.returncode == 0, r.stderr[-3000:]
    assert (row / "metrics.json").stat().st_mtime_ns == trained

    other = generate(tmp_path / "other", per_class=24, size=96, seed=7)
    r = run_cli(*_bench_cmd(other, out, cmd[cmd.index("--reuse") + 1]))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained from other inputs (photos, data)" in r.stderr, r.stderr[-3000:]
    assert json.loads((row / "config.json").read_text())["train"]["data"] == str(other)
    rep = json.loads((out / "report.json").read_text())
    test_n = sum(json.loads((row / "split" / "split.json").read_text())["counts"]["test"].values())
    assert str(other) in rep["data"] and rep["rows"][1]["test_n"] == test_n


def test_a_data_subset_is_linked_again_when_its_source_or_settings_change(synth_data, tmp_path):
    from benchmarks.bench import stratified_subset
    from edge_runtime.errors import UserError

    sub = stratified_subset(str(synth_data), tmp_path / "data", 5, seed=0)
    assert sorted(len(list(d.iterdir())) for d in sub.iterdir() if d.is_dir()) == [5, 5, 5]
    assert stratified_subset(str(synth_data), sub, 5, seed=0) == sub
    stratified_subset(str(synth_data), sub, 3, seed=0)     # another count: relinked, not mixed
    assert sorted(len(list(d.iterdir())) for d in sub.iterdir() if d.is_dir()) == [3, 3, 3]
    (sub / "mine.txt").write_text("a user's file")
    with pytest.raises(UserError, match="holds files the bench did not make"):
        stratified_subset(str(synth_data), sub, 4, seed=0)
    assert (sub / "mine.txt").exists()
