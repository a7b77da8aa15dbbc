"""`edgetl runs`: every run directory under some folders as one table, read from the files each
run already holds (config.json, metrics.json, split/, deploy/manifest.json, latency reports).

Two runs are comparable when they saw the same data and were scored on the same test files; the
split's content fingerprints (trainer.data.split.content_fingerprints) decide that, so a run
trained weeks ago on a copy of the folder still lines up with today's.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_runtime.errors import UserError

from . import rundir as R

SORT_KEYS = ("when", "accuracy", "class_avg", "run", "backbone", "size_mb", "latency")
_SKIP_DIRS = {R.CACHE, R.CHECKPOINTS, R.PLOTS, R.SPLIT, R.LOGS, R.PREDICTIONS, "node_modules", "__pycache__"}


@dataclass
class ArtifactSummary:
    precision: str
    accuracy: float | None
    size_mb: float
    sha256: str
    latency_ms: float | None = None   # end-to-end median at the most threads measured
    latency_threads: int | None = None
    latency_source: str | None = None


@dataclass
class RunSummary:
    run: str
    when: str                  # when the run finished (or last changed), local time
    status: str                # done | incomplete (<phase>)
    data: str
    data_fingerprint: str | None
    test_fingerprint: str | None
    backbone: str
    alpha: float | None
    size: int
    head: str
    head_solver: str
    fine_tuned: bool
    accuracy: float | None
    class_avg_accuracy: float | None
    n_test: int | None
    artifacts: list[ArtifactSummary] = field(default_factory=list)
    group: str = ""            # runs with the same letter are comparable

    def to_dict(self) -> dict:
        return asdict(self)


def is_run(path: Path) -> bool:
    """A folder `edgetl train` made: its config.json beside its labels or split lists (a damaged
    config.json still makes it a run, listed as damaged, not passed over)."""
    p = Path(path)
    return (p / R.CONFIG).is_file() and ((p / R.LABELS).is_file() or (p / R.SPLIT).is_dir())


def find_runs(roots: list[Path]) -> list[Path]:
    """Run directories at or under each root (a run's own subfolders are not searched; hidden
    folders and virtual environments are skipped)."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root}: no such folder")
        if is_run(root):
            found.append(root)
            continue
        for dirpath, dirnames, _ in os.walk(root):
            d = Path(dirpath)
            if d != root and is_run(d):
                found.append(d)
                dirnames[:] = []
                continue
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in _SKIP_DIRS
                                 and not (d / n / "pyvenv.cfg").exists())
    seen, out = set(), []
    for r in found:
        k = r.resolve()
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def fingerprints(run: Path) -> dict:
    """The split's fingerprints as recorded at training time; computed from the files for runs
    from before they were recorded (nothing is written: listing never changes a run)."""
    from ..data.split import Split, content_fingerprints

    sp = Split.load(Path(run) / R.SPLIT)
    return sp.fingerprints or content_fingerprints(sp)


def _median(timing) -> float | None:
    """The end-to-end median of a latency entry ({"median": ms} or {"end_to_end_ms": {...}})."""
    if isinstance(timing, dict) and "end_to_end_ms" in timing:
        timing = timing["end_to_end_ms"]
    m = timing.get("median") if isinstance(timing, dict) else None
    return float(m) if isinstance(m, (int, float)) and not isinstance(m, bool) else None


def latency_index(roots: list[Path], runs: list[Path]) -> dict[str, tuple[float, int, str]]:
    """sha256 -> (end-to-end median ms, threads, source file), from every device benchmark
    (``edge-predict DEPLOY --benchmark`` writes DEPLOY/benchmark.json) and bench report found.
    The most threads measured wins, then the newest file."""
    files = []
    for r in runs:
        files += list((Path(r) / R.DEPLOY).glob("benchmark*.json"))
    for root in roots:
        if Path(root).is_dir():
            files += list(Path(root).glob("report.json")) + list(Path(root).glob("*/report.json"))
    index = {}
    for f in sorted(set(files), key=lambda p: p.stat().st_mtime):
        try:
            rep = R.read_json(f)
        except UserError:
            continue
        if not isinstance(rep, dict):
            continue
        rows = rep.get("rows")
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not isinstance(row.get("sha256"), str):
                continue
            if rep.get("kind") == "edgetl-device-benchmark/1":
                cands = [(row.get("threads"), _median(row.get("end_to_end_ms")))]
            elif rep.get("kind") == "edgetl-bench/1":
                lat = row.get("latency")
                cands = [(t, _median(v)) for t, v in (lat.items() if isinstance(lat, dict) else [])]
            else:
                continue
            for threads, ms in cands:   # a hand-edited or cut report: its bad rows are passed over
                threads = int(threads) if isinstance(threads, (int, str)) and str(threads).isdigit() else None
                if ms is None or threads is None:
                    continue
                old = index.get(row["sha256"])
                if old is None or threads >= old[1]:
                    index[row["sha256"]] = (float(ms), int(threads), str(f))
    return index


def summarise(run: Path, latency: dict | None = None) -> RunSummary:
    """One run's row, read from its files."""
    from .run import Run

    run = Path(run)
    r = Run(run)
    cfg = r.config()
    t = cfg.train
    metrics, state = r.metrics(), r.state()
    test = metrics.get("test") or {}
    done = state.get("phase") == "done" and bool(test)
    stamp = max((run / f).stat().st_mtime for f in (R.CONFIG, R.METRICS, R.STATE) if (run / f).exists())
    try:
        fp = fingerprints(run)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        fp = {}
    arts = []
    man = run / R.DEPLOY / "manifest.json"
    if man.exists():
        try:
            m = R.read_json(man)
            for a in m.get("artifacts", []):
                v = a.get("verification") or {}
                lat = (latency or {}).get(a.get("sha256"))
                arts.append(ArtifactSummary(
                    precision=a.get("precision", "?"), accuracy=v.get("accuracy"),
                    size_mb=round(a.get("bytes", 0) / 1e6, 3), sha256=a.get("sha256", ""),
                    latency_ms=lat[0] if lat else None, latency_threads=lat[1] if lat else None,
                    latency_source=lat[2] if lat else None))
        except (UserError, OSError, ValueError, AttributeError):
            pass
    return RunSummary(
        run=str(run), when=time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)),
        status="done" if done else f"incomplete ({state.get('phase') or 'not started'})",
        data=str(t.get("data", "?")), data_fingerprint=fp.get("data"), test_fingerprint=fp.get("test"),
        backbone=cfg.backbone_name, alpha=cfg.alpha, size=cfg.size, head=str(t.get("head", "softmax")),
        head_solver=str(t.get("head_solver", "sgd")), fine_tuned=bool(t.get("fine_tune")),
        accuracy=test.get("accuracy"), class_avg_accuracy=test.get("class_avg_accuracy"),
        n_test=test.get("n"), artifacts=arts)


def _summary_or_damaged(run: Path, latency: dict) -> RunSummary:
    """One damaged run never hides the others: it is listed as damaged, with the reason."""
    try:
        return summarise(run, latency)
    except UserError as e:
        return RunSummary(run=str(run), when="-", status=f"damaged: {e}", data="?", data_fingerprint=None,
                          test_fingerprint=None, backbone="?", alpha=None, size=0, head="?", head_solver="?",
                          fine_tuned=False, accuracy=None, class_avg_accuracy=None, n_test=None)


def assign_groups(rows: list[RunSummary]) -> None:
    """Same data and same test files -> same letter; a run without fingerprints gets '?'."""
    letters = {}
    for r in rows:
        if not (r.data_fingerprint and r.test_fingerprint):
            r.group = "?"
            continue
        key = (r.data_fingerprint, r.test_fingerprint)
        if key not in letters:
            n = len(letters)
            letters[key] = chr(ord("A") + n) if n < 26 else f"G{n}"
        r.group = letters[key]


def list_runs(roots: list[str | Path], sort: str = "when") -> list[RunSummary]:
    """Every run under ``roots``, one summary each, comparable ones sharing a group letter."""
    if sort not in SORT_KEYS:
        raise UserError(f"unknown --sort {sort!r}; use one of {', '.join(SORT_KEYS)}")
    roots = [Path(r) for r in roots] or [Path(".")]
    runs = find_runs(roots)
    lat = latency_index(roots, runs)
    rows = [_summary_or_damaged(r, lat) for r in runs]
    assign_groups(rows)
    return sorted(rows, key=_sort_key(sort))


def _best_artifact(r: RunSummary) -> ArtifactSummary | None:
    return next((a for a in r.artifacts if a.precision == "int8"), r.artifacts[0] if r.artifacts else None)


def _sort_key(sort: str):
    def key(r: RunSummary):
        a = _best_artifact(r)
        return {"when": (r.when,), "run": (r.run,), "backbone": (r.backbone, r.alpha or 0, r.size),
                "accuracy": (-(r.accuracy or -1),), "class_avg": (-(r.class_avg_accuracy or -1),),
                "size_mb": (a.size_mb if a else float("inf"),),
                "latency": (a.latency_ms if a and a.latency_ms is not None else float("inf"),)}[sort]
    return key


# ------------------------------------------------------------------------- formatting
def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def _artifact_text(a: ArtifactSummary) -> str:
    lat = f" {a.latency_ms:.1f}ms@{a.latency_threads}t" if a.latency_ms is not None else ""
    return f"{a.precision} {_fmt(a.accuracy)} {a.size_mb:.1f}MB{lat}"


def format_table(rows: list[RunSummary]) -> str:
    if not rows:
        return "no runs found (a run directory holds config.json from `edgetl train`)"
    head = ["grp", "when", "run", "data", "backbone", "head", "ft", "test acc", "class-avg", "n",
            "deploy (precision accuracy size latency)"]
    body = []
    for r in rows:
        data = f"{Path(r.data).name}#{(r.data_fingerprint or '?')[:6]}"
        bb = f"{r.backbone} {r.alpha if r.alpha is not None else ''}@{r.size}".replace(" @", "@")
        head_txt = f"{r.head}/{r.head_solver}"
        deploy = "; ".join(_artifact_text(a) for a in r.artifacts) or "-"
        acc = _fmt(r.accuracy) if r.status == "done" else r.status
        body.append([r.group, r.when, r.run, data, bb, head_txt, "yes" if r.fine_tuned else "no", acc,
                     _fmt(r.class_avg_accuracy), _fmt(r.n_test, "d"), deploy])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    groups = {r.group for r in rows}
    if len(groups) > 1:
        lines.append("grp: runs with different letters saw different data or were scored on different "
                     "test files; their accuracies are not comparable ('?': no split fingerprint).")
    return "\n".join(lines)


def to_csv(rows: list[RunSummary]) -> str:
    buf = io.StringIO()
    fields = ["group", "when", "status", "run", "data", "data_fingerprint", "test_fingerprint", "backbone",
              "alpha", "size", "head", "head_solver", "fine_tuned", "accuracy", "class_avg_accuracy", "n_test"]
    precisions = sorted({a.precision for r in rows for a in r.artifacts})
    extra = [f"{p}_{k}" for p in precisions for k in ("accuracy", "size_mb", "latency_ms")]
    w = csv.writer(buf)
    w.writerow(fields + extra)
    for r in rows:
        d = r.to_dict()
        by = {a.precision: a for a in r.artifacts}
        vals = [d[f] for f in fields]
        for p in precisions:
            a = by.get(p)
            vals += [a.accuracy, a.size_mb, a.latency_ms] if a else ["", "", ""]
        w.writerow(["" if v is None else v for v in vals])
    return buf.getvalue()


def to_json(rows: list[RunSummary]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
