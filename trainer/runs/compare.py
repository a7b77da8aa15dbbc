"""`edgetl runs compare`: two or more runs side by side, from the files they hold.

What differs in their configs; overall and per-class accuracy, precision and recall with the
better value marked; the test images one run gets right and the other wrong; and one figure with
per-class bars for every run beside their ROC curves. Per-class numbers, image disagreements and
the figure need the runs to have been scored on the same test files (same split fingerprint):
otherwise the comparison says so and shows only what stands on its own.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_runtime.errors import UserError

from . import rundir as R
from .history import fingerprints, is_run
from .run import read_config, read_metrics, read_predictions

OVERALL = ("accuracy", "class_avg_accuracy", "macro_f1", "macro_auc")
PER_CLASS = ("accuracy", "precision", "recall")
IGNORED_CONFIG = {"train.out"}   # always differs, says nothing about the model


@dataclass
class Comparison:
    runs: list[str]
    names: list[str]
    config_diff: dict[str, list]                       # dotted key -> value per run
    overall: dict[str, list]                           # metric -> value per run
    overall_best: dict[str, list[int]]                 # metric -> indices of the best run(s)
    comparable: bool
    why_not: str | None = None
    per_class: dict[str, dict[str, list]] = field(default_factory=dict)      # class -> metric -> values
    per_class_best: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    disagreements: list[dict] = field(default_factory=list)  # per pair: files only one run gets right
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def best_indices(values: list, higher_is_better: bool = True) -> list[int]:
    """Indices of the best value(s); none when every run has the same value (nothing is better)
    or no run has one."""
    have = [(i, v) for i, v in enumerate(values) if v is not None]
    if not have or len({v for _, v in have}) == 1 and len(have) == len(values):
        return []
    best = (max if higher_is_better else min)(v for _, v in have)
    return [i for i, v in have if v == best]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(configs: list[dict]) -> dict[str, list]:
    """Only the settings that differ between runs (a key one run lacks counts as different)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat) - IGNORED_CONFIG)
    missing = "(not recorded)"   # a setting added after the older run was trained
    return {k: [f.get(k, missing) for f in flat] for k in keys if len({repr(f.get(k, missing)) for f in flat}) > 1}


def _names(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [str(r) for r in runs]
    return names


def _load(run: Path) -> tuple[dict, dict]:
    if not is_run(run):
        raise UserError(f"{run}: not a run directory (no config.json from `edgetl train`)")
    m = read_metrics(run)
    if not m.get("test"):
        raise UserError(f"{run}: no test metrics yet; finish training or run `edgetl eval {run}`")
    return read_config(run).to_dict(), m


def outcomes(run: Path) -> dict[str, tuple[str, str]]:
    """Test image (path relative to the data root) -> (true class, predicted class)."""
    from ..data.split import Split

    sp = Split.load(run / R.SPLIT)
    if (run / R.PREDICTIONS / "test.npz").exists():
        files, y, probs, classes = read_predictions(run)
        pred = probs.argmax(axis=1)
        return {_relative(f, sp.root): (classes[int(t)], classes[int(q)]) for f, t, q in zip(files, y, pred)}
    # runs from before the scores were kept: right unless listed as misclassified
    wrong = {}
    for m in read_metrics(run)["test"].get("misclassified", []):
        wrong[_relative(m["file"], sp.root)] = m["predicted"]
    return {rel: (label, wrong.get(rel, label)) for rel, label in sp["test"]}


def _relative(file, root) -> str:
    """A test file as its path under the data root (how split lists name it), so runs whose data
    folder moved still line up."""
    f, root = Path(str(file)), Path(root)
    return f.relative_to(root).as_posix() if f.is_relative_to(root) else f.as_posix()


def compare_runs(runs: list[str | Path], out: str | Path | None = None, max_images: int = 12) -> Comparison:
    """Compare runs; with ``out``, also write compare.md, compare.json and the figures there."""
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise UserError("compare needs at least two runs")
    loaded = [_load(r) for r in runs]
    configs, metrics = [c for c, _ in loaded], [m for _, m in loaded]
    names = _names(runs)
    tests = [m["test"] for m in metrics]
    overall = {k: [t.get(k) for t in tests] for k in OVERALL}
    overall["n"] = [t.get("n") for t in tests]
    cmp = Comparison(runs=[str(r) for r in runs], names=names, config_diff=config_diff(configs),
                     overall=overall, overall_best={k: best_indices(overall[k]) for k in OVERALL},
                     comparable=True)
    fps = []
    for r in runs:
        try:
            fps.append(fingerprints(r))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{r}: its split/ cannot be read ({e}); it cannot be compared per image") from None
    if len({fp["test"] for fp in fps}) > 1:
        cmp.comparable = False
        groups: dict[str, list[str]] = {}
        for name, fp in zip(names, fps):
            groups.setdefault(fp["test"][:8], []).append(name)
        parts = "; ".join(f"{', '.join(ns)}: {k}" for k, ns in groups.items())
        same_data = len({fp["data"] for fp in fps}) == 1
        cmp.why_not = ("per-class comparison refused: the runs were scored on different test files "
                       f"(test split fingerprints {parts}). "
                       + ("They saw the same photos split differently: train with the same --seed and --fractions"
                          if same_data else "They saw different data: compare runs of one data set")
                       + ", or score each on one folder with `edgetl eval RUN --data DIR`.")
    else:
        _per_class(cmp, tests)
        _disagreements(cmp, runs, max_images)
    if out is not None:
        write(cmp, runs, Path(out), max_images)
    return cmp


def _per_class(cmp: Comparison, tests: list[dict]) -> None:
    classes = list(tests[0]["per_class"])
    for c in classes:
        cmp.per_class[c] = {k: [t["per_class"].get(c, {}).get(k) for t in tests] for k in PER_CLASS}
        cmp.per_class_best[c] = {k: best_indices(v) for k, v in cmp.per_class[c].items()}


def _disagreements(cmp: Comparison, runs: list[Path], max_images: int) -> None:
    outs = [outcomes(r) for r in runs]
    for i, j in itertools.combinations(range(len(runs)), 2):
        a, b = outs[i], outs[j]
        common = sorted(set(a) & set(b))
        only_a = [f for f in common if a[f][0] == a[f][1] and b[f][0] != b[f][1]]
        only_b = [f for f in common if b[f][0] == b[f][1] and a[f][0] != a[f][1]]
        cmp.disagreements.append({
            "a": cmp.names[i], "b": cmp.names[j],
            "a_right_b_wrong": [{"file": f, "true": a[f][0], "b_predicted": b[f][1]} for f in only_a],
            "b_right_a_wrong": [{"file": f, "true": b[f][0], "a_predicted": a[f][1]} for f in only_b]})


# ------------------------------------------------------------------------- text and files
def _cell(v, best: bool) -> str:
    if v is None:
        return "-"
    s = f"{v:.4f}" if isinstance(v, float) else str(v)
    return f"**{s}**" if best else s


def format_markdown(cmp: Comparison) -> str:
    n = cmp.names
    lines = [f"# Runs compared: {', '.join(n)}", ""]
    lines += ["| run | path |", "|---|---|"] + [f"| {a} | `{p}` |" for a, p in zip(n, cmp.runs)] + [""]
    lines += ["## Config (only what differs)", ""]
    if cmp.config_diff:
        lines += ["| setting | " + " | ".join(n) + " |", "|---|" + "---|" * len(n)]
        lines += [f"| {k} | " + " | ".join(f"`{v}`" for v in vals) + " |" for k, vals in cmp.config_diff.items()]
    else:
        lines.append("The configs are identical.")
    lines += ["", "## Test metrics (better value in bold)", "",
              "| metric | " + " | ".join(n) + " |", "|---|" + "---|" * len(n)]
    for k, vals in cmp.overall.items():
        best = cmp.overall_best.get(k, [])
        lines.append(f"| {k} | " + " | ".join(_cell(v, i in best) for i, v in enumerate(vals)) + " |")
    lines.append("")
    if not cmp.comparable:
        lines += [f"**{cmp.why_not}**", ""]
        return "\n".join(lines)
    lines += ["## Per class (better value in bold)", "",
              "| class | metric | " + " | ".join(n) + " |", "|---|---|" + "---|" * len(n)]
    for c, per in cmp.per_class.items():
        for k, vals in per.items():
            best = cmp.per_class_best[c][k]
            lines.append(f"| {c} | {k} | " + " | ".join(_cell(v, i in best) for i, v in enumerate(vals)) + " |")
    lines += ["", "## Images one run gets right and the other wrong", ""]
    for d in cmp.disagreements:
        lines.append(f"- {d['a']} right, {d['b']} wrong: {len(d['a_right_b_wrong'])}; "
                     f"{d['b']} right, {d['a']} wrong: {len(d['b_right_a_wrong'])}")
    for note in cmp.notes:
        lines += ["", f"Note: {note}"]
    if cmp.figures:
        lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in cmp.figures]
    return "\n".join(lines) + "\n"


def write(cmp: Comparison, runs: list[Path], out: Path, max_images: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if cmp.comparable:
        from ..plots import plot_compare, plot_disagreements

        scores = [_scores(r) for r in runs]
        if any(s is None for s in scores):
            missing = [n for n, s in zip(cmp.names, scores) if s is None]
            cmp.notes.append(f"no saved test scores for {', '.join(missing)} (runs from before they were "
                             "kept): ROC curves left out; `edgetl eval RUN` saves them")
        plot_compare(cmp, scores, out / "compare.png")
        cmp.figures.append(str(out / "compare.png"))
        sp = _root(runs[0])
        for k, d in enumerate(cmp.disagreements):
            f = out / f"disagreements_{k + 1}.png"
            if plot_disagreements(d, sp, f, max_images):
                cmp.figures.append(str(f))
    R.write_json(out / "compare.json", cmp.to_dict())
    R.write_text(out / "compare.md", format_markdown(cmp))


def _root(run: Path) -> Path:
    from ..data.split import Split
    return Path(Split.load(run / R.SPLIT).root)


def _scores(run: Path):
    """(y, probs, classes) of the run's test split, or None when not saved."""
    if not (run / R.PREDICTIONS / "test.npz").exists():
        return None
    _, y, probs, classes = read_predictions(run)
    return y, probs, classes
