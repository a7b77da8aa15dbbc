"""studies.feature_taps.study: how the registry's taps were chosen, without the run's test split."""
import json
import shutil

from studies.feature_taps import study as FT


def _copy_run(run, dst):
    dst.mkdir()
    for name in ("config.json", "labels.txt"):
        shutil.copy(run / name, dst / name)
    shutil.copytree(run / "split", dst / "split")
    return dst


def test_the_choice_never_reads_the_runs_test_split(small_run, tmp_path):
    """Every test photo relabelled to another class: the nested re-splits (what chooses) give the
    same numbers; only the for-information own-split column may move."""
    run = _copy_run(small_run, tmp_path / "run")
    poisoned = _copy_run(small_run, tmp_path / "poisoned")
    labels = (run / "labels.txt").read_text().split()
    lines = (poisoned / "split" / "test.tsv").read_text().splitlines()
    relabel = [ln if ln.startswith("#") else
               ln.rsplit("\t", 1)[0] + "\t" + labels[(labels.index(ln.rsplit("\t", 1)[1]) + 1) % len(labels)]
               for ln in lines]
    (poisoned / "split" / "test.tsv").write_text("\n".join(relabel) + "\n")
    a, b = FT.compare(run, draws=2), FT.compare(poisoned, draws=2)
    assert {c: s["inner_accuracy"] for c, s in a["candidates"].items()} == \
        {c: s["inner_accuracy"] for c, s in b["candidates"].items()}
    assert set(a["candidates"]) == set(FT.CANDIDATES["mobilenet_v2"])


def test_the_report_marks_the_taps_the_registry_uses(small_run, tmp_path):
    from trainer.backbones import get_backbone

    FT.main([str(small_run), "--draws", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "feature_taps.json").read_text())["results"][0]
    assert result["registry_taps"] == list(get_backbone("mobilenet_v2").taps)
    marked = [line for line in (tmp_path / "feature_taps.md").read_text().splitlines() if "| ✓ |" in line]
    assert len(marked) == 1 and "block_15_add, block_12_add" in marked[0]
    widths = {c: s["width"] for c, s in result["candidates"].items()}
    assert widths["final"] < widths["end of the 7x7 stage"] < widths["ends of the 7x7 and 14x14 stages"]
