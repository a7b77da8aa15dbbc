"""The bench report: one table (Markdown, CSV, JSON) and one picture (accuracy vs latency, Pareto).

Latency columns come from the edge runtime on the machine that ran them; ratios to a reference
row make numbers from a noisy, shared machine comparable within one report. Known traps that
show up in the numbers are flagged, not hidden.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edge_runtime.atomic import write_bytes, write_text

COLUMNS = ["backbone", "size", "precision", "weights", "status", "size_mb", "top1", "class_avg", "drop_pts",
           "raw_1t_ms", "raw_1t_p90", "raw_nt_ms", "raw_nt_p90", "e2e_nt_ms", "fps", "ratio", "xnnpack"]
DEVICE_TOP1 = "device_top1"   # a merged report's accuracy measured on the device itself


def columns(rep: dict) -> list[str]:
    """The table's columns: a merged report whose device measured accuracy shows it beside top1."""
    if not any(r.get("device_accuracy") is not None for r in rep["rows"]):
        return COLUMNS
    i = COLUMNS.index("top1") + 1
    return COLUMNS[:i] + [DEVICE_TOP1] + COLUMNS[i:]


def save_report(out: Path, name: str, result: dict, md: str) -> None:
    """A benchmark's result as ``out/name.json`` beside its table ``out/name.md`` (each written
    atomically), and the table on stdout."""
    from edge_runtime.atomic import write_json

    write_json(Path(out) / f"{name}.json", result)
    write_text(Path(out) / f"{name}.md", md)
    print(md)


def _atomic(path: Path, text_or_bytes) -> None:
    (write_bytes if isinstance(text_or_bytes, bytes) else write_text)(path, text_or_bytes)


def _lat(r: dict, threads: str, key: str, stat: str = "median"):
    try:
        return r["latency"][threads][key][stat]
    except (KeyError, TypeError):
        return None


def reference_row(rep: dict) -> dict | None:
    want = rep.get("config", {}).get("reference")
    ok = [r for r in rep["rows"] if r.get("status") == "ok" and r.get("latency")]
    for r in ok:
        if want and f"{r['row']} {r['precision']}" == want:
            return r
    return next((r for r in ok if r["precision"] == "fp32"), ok[0] if ok else None)


def table_rows(rep: dict) -> list[dict]:
    """Flat rows with the report's columns (None where a value does not exist)."""
    t1, tn = "1", str(rep["threads"][-1])
    ref = reference_row(rep)
    ref_ms = _lat(ref, tn, "raw_ms") if ref else None
    out = []
    for r in rep["rows"]:
        raw_n = _lat(r, tn, "raw_ms")
        latency_only = bool(r.get("latency_only"))
        out.append({
            "backbone": r["backbone"] + (f" {float(r['alpha'])}" if r.get("alpha") and
                                         r["backbone"].startswith("mobilenet") else ""),
            "size": r.get("size"), "precision": r["precision"],
            "weights": Path(r["weights"]).name if r.get("weights") and "/" in r["weights"] else r.get("weights", "-"),
            "status": r["status"], "size_mb": r.get("size_mb"),
            "top1": None if latency_only else r.get("accuracy"),
            DEVICE_TOP1: None if latency_only else r.get("device_accuracy"),
            "class_avg": None if latency_only else r.get("class_avg_accuracy"),
            "drop_pts": None if latency_only else r.get("drop_points"),
            "raw_1t_ms": _lat(r, t1, "raw_ms"), "raw_1t_p90": _lat(r, t1, "raw_ms", "p90"),
            "raw_nt_ms": raw_n, "raw_nt_p90": _lat(r, tn, "raw_ms", "p90"),
            "e2e_nt_ms": _lat(r, tn, "end_to_end_ms"),
            "fps": (r.get("latency") or {}).get(tn, {}).get("fps"),
            "ratio": round(raw_n / ref_ms, 2) if raw_n and ref_ms else None,
            "xnnpack": ("full" if r.get("fully_delegated") else
                        "partial: " + ",".join(sorted(set(r.get("not_delegated") or [])))) if "ops" in r else None,
        })
    return out


# how much slower than fp32 a precision must be to be flagged; fp16 runs the very same float32
# kernels after load, so any gap under 25 % is noise
_SLOWER = {"int8": 1.10, "int8-qat": 1.10, "dynamic": 1.10, "fp16": 1.25}
# boundary ops of a uint8/int8-I/O model: outside XNNPACK, but a single cheap pass over the input
_BOUNDARY = {"QUANTIZE", "DEQUANTIZE"}


def _why_slower(precision: str, not_delegated: list[str], isa: str = "unknown") -> str:
    if precision in ("int8", "int8-qat"):
        inner = sorted(set(not_delegated) - _BOUNDARY)
        if inner:
            return f"{', '.join(inner)} not delegated: it runs on TFLite's reference int8 kernels"
        if isa.startswith(("AVX2 only", "ARM NEON, no")):
            return (f"every compute op is in XNNPACK (only the input QUANTIZE is not); this CPU has {isa}, "
                    "so an int8 dot product takes several instructions and int8 is no faster than fp32 here. "
                    "On a VNNI x86 or an ARM core with int8 dot-product it is about 2x faster: measure on the "
                    "device (edge-predict --benchmark)")
        if isa != "unknown":
            return (f"every compute op is in XNNPACK (only the input QUANTIZE is not) and this CPU has {isa}, "
                    "where int8 is usually about 2x faster than fp32: a slower int8 here is more likely "
                    "noise on a shared machine; measure again")
        return ("every compute op is in XNNPACK (only the input QUANTIZE is not); this CPU's int8 "
                "instructions are unknown, so measure on the device (edge-predict --benchmark)")
    if precision == "dynamic":
        return ("dynamic-range kernels quantize activations on the fly and are not delegated to "
                "XNNPACK on x86")
    return "fp16 weights are dequantized to float32 at load; no fp16 arithmetic on this CPU"


def traps(rep: dict) -> list[str]:
    """Known pitfalls visible in this report's own numbers."""
    tn = str(rep["threads"][-1])
    by = {}
    for r in rep["rows"]:
        if r.get("status") == "ok":
            by.setdefault(r["row"], {})[r["precision"]] = r
    notes = []
    isa = rep.get("machine", {}).get("int8_instructions", "unknown")
    for name, precs in by.items():
        fp32 = _lat(precs.get("fp32"), tn, "raw_ms") if "fp32" in precs else None
        fp32_p90 = _lat(precs.get("fp32"), tn, "raw_ms", "p90") if "fp32" in precs else None
        for p in ("int8", "int8-qat", "dynamic", "fp16"):
            ms = _lat(precs.get(p), tn, "raw_ms") if p in precs else None
            # medians taken minutes apart on a shared machine: only a gap beyond fp32's own spread counts
            if fp32 and ms and ms > fp32 * _SLOWER[p] and ms > (fp32_p90 or fp32):
                notes.append(f"{name}: {p} is slower than fp32 ({ms:.2f} vs {fp32:.2f} ms): "
                             f"{_why_slower(p, precs[p].get('not_delegated') or [], isa)}")
        for p, r in precs.items():   # a whole frame cannot take less than the invoke inside it
            raw, e2e = _lat(r, tn, "raw_ms"), _lat(r, tn, "end_to_end_ms")
            if raw and e2e and e2e < raw:
                notes.append(f"{name} {p}: end-to-end median {e2e:.2f} ms is below the raw invoke median "
                             f"{raw:.2f} ms: noise from a shared machine, not a real difference; measure again")
        for p, r in precs.items():
            if r.get("not_delegated"):
                notes.append(f"{name} {p}: not fully delegated to XNNPACK; on the CPU's own kernels: "
                             f"{', '.join(sorted(set(r['not_delegated'])))}")
    for r in rep["rows"]:
        if r.get("status", "ok") != "ok":
            notes.append(f"{r['row']} {r['precision']}: {r['status']}")
    return notes


def pareto(points: list[tuple[float, float, int]]) -> set[int]:
    """Indices on the accuracy-latency front: no other point is at least as fast and more accurate."""
    front, best = set(), -1.0
    for _ms, acc, i in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.add(i)
            best = acc
    return front


def best_under_budget(rep: dict, budget_ms: float) -> dict | None:
    """The most accurate ranked artifact whose end-to-end median (all cores) is within the budget."""
    tn = str(rep["threads"][-1])
    ok = [r for r in rep["rows"] if r.get("status") == "ok" and not r.get("latency_only")
          and (_lat(r, tn, "end_to_end_ms") or 1e9) <= budget_ms]
    return max(ok, key=lambda r: (r["accuracy"], -_lat(r, tn, "end_to_end_ms")), default=None)


_DIGITS = {"top1": 4, DEVICE_TOP1: 4, "class_avg": 4, "fps": 1}


def _fmt(v, col: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{_DIGITS.get(col, 2)}f}"
    return str(v)


def markdown(rep: dict, budget_ms: float | None = None) -> str:
    m = rep["machine"]
    tn = rep["threads"][-1]
    ref = reference_row(rep)
    lines = [f"# edgetl bench: {rep.get('preset', '')}", ""]
    if rep.get("command"):
        lines.append(f"- command: `{rep['command']}`")
    if rep.get("complete") is False:
        done = list(dict.fromkeys(r["row"] for r in rep["rows"]))
        lines.append(f"- **partial**: {len(done)} of {len(rep.get('rows_planned', done))} rows finished "
                     "(the bench stopped, or is still running)")
    lines += [
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['system']} {m['machine']}, Python {m['python']}, "
             f"runtime {m['runtime']} ({', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}), "
             f"int8 instructions: {m.get('int8_instructions', 'not recorded')}",
             f"- data: {rep['data']}", f"- date: {rep['date']}",
             f"- latency: {rep['method']['warmup']} warm-up runs discarded, {rep['method']['runs']} timed runs, median "
             f"and p90, in ms; raw = interpreter invoke only, e2e = decoded 640x480 frame -> top-k; 1t = 1 thread, "
             f"nt = {tn} threads; {rep['method']['process']}",
             f"- ratio: raw nt latency / reference ({ref['row']} {ref['precision']})" if ref else "- ratio: no reference",
             "- accuracy: top-1 on the held-out test split through the edge runtime"
             + ("; '-' for latency-only rows (no ImageNet weights offline: random init, trained on a small subset "
                "just to have a model)" if any(r.get("latency_only") for r in rep["rows"]) else "")]
    cols = columns(rep)
    if DEVICE_TOP1 in cols:
        lines.append(f"- {DEVICE_TOP1}: the same test photos classified on the device (`edge-predict --benchmark "
                     "--eval`): int8 kernels round differently per instruction set")
    rows = table_rows(rep)
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c], c) for c in cols) + " |")
    notes = traps(rep)
    if notes:
        lines += ["", "## Flags", ""] + [f"- {n}" for n in notes]
    if budget_ms is not None:
        b = best_under_budget(rep, budget_ms)
        lines += ["", f"## Budget {budget_ms:g} ms (end-to-end, {tn} threads)", "",
                  (f"Most accurate within budget: **{b['row']} {b['precision']}**, top-1 {b['accuracy']:.4f}, "
                   f"{_lat(b, str(tn), 'end_to_end_ms'):.2f} ms, {b['size_mb']:.2f} MB ({b['file']})") if b else
                  "No artifact fits this budget on this machine."]
    return "\n".join(lines) + "\n"


def to_csv(rep: dict) -> str:
    buf = io.StringIO()
    cols = columns(rep)
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in table_rows(rep):
        w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    return buf.getvalue()


def plot(rep: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tn = str(rep["threads"][-1])
    pts = [(r, _lat(r, tn, "raw_ms")) for r in rep["rows"]
           if r.get("status") == "ok" and not r.get("latency_only") and _lat(r, tn, "raw_ms")]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    markers = {"fp32": "o", "fp16": "s", "dynamic": "^", "int8": "D", "int8-qat": "P"}
    # colour = backbone row, marker = precision: fp32/fp16 pairs sit on top of each other, so
    # points carry no text and the legend names both
    names = list(dict.fromkeys(r["row"] for r, _ in pts))
    colour = {n: plt.cm.tab10(k % 10) for k, n in enumerate(names)}
    front = pareto([(ms, r["accuracy"], i) for i, (r, ms) in enumerate(pts)])
    for i, (r, ms) in enumerate(pts):
        ax.scatter(ms, r["accuracy"], marker=markers.get(r["precision"], "o"), s=70, color=colour[r["row"]],
                   edgecolors="black" if i in front else "none", linewidths=1.5, zorder=3, alpha=.85)
    fp = sorted((pts[i][1], pts[i][0]["accuracy"]) for i in front)
    if fp:
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "k--", lw=1, label="Pareto front (outlined)", zorder=2)
    for n in names:
        ax.scatter([], [], marker="o", color=colour[n], label=n)
    for p, mk in markers.items():
        ax.scatter([], [], marker=mk, color="gray", label=p)
    ax.set_xlabel(f"raw invoke latency, median ms ({tn} threads)")
    ax.set_ylabel("top-1 accuracy (held-out test)")
    ax.set_title(f"accuracy vs latency: {rep.get('preset', '')} ({rep['machine']['cpu']})", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _atomic(path, buf.getvalue())
    return True


def write_report(rep: dict, out: Path, budget_ms: float | None = None) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "report.json", "md": out / "report.md", "csv": out / "report.csv",
             "png": out / "accuracy_vs_latency.png"}
    _atomic(files["json"], json.dumps(rep, indent=1))
    _atomic(files["md"], markdown(rep, budget_ms))
    _atomic(files["csv"], to_csv(rep))
    if not plot(rep, files["png"]):
        files.pop("png")
    return files


def merge(accuracy: dict, device: dict) -> dict:
    """A bench report (box-side accuracy) with latencies measured on a device (edge-predict
    --benchmark --json), matched by the artifacts' sha256."""
    by_sha: dict[str, dict] = {}
    device_acc = {d["sha256"]: d["accuracy"] for d in device["rows"] if d.get("accuracy") is not None}
    for d in device["rows"]:
        by_sha.setdefault(d["sha256"], {})[str(d["threads"])] = {k: d[k] for k in ("raw_ms", "end_to_end_ms", "fps")}
    rows = []
    for r in accuracy["rows"]:
        r = dict(r)
        if r.get("sha256") in device_acc:
            r["device_accuracy"] = device_acc[r["sha256"]]
        if r.get("sha256") in by_sha:
            r["latency"] = by_sha[r["sha256"]]
        elif r.get("status") == "ok":
            r["latency"], r["status"] = {}, "not measured on this device"
        rows.append(r)
    threads = sorted({int(t) for lat in by_sha.values() for t in lat}) or [1]
    return {**accuracy, "machine": device["machine"], "date": device["date"], "threads": threads,
            "method": {**device["method"], "process": "edge-predict --benchmark on the device"},
            "measured_on": "device", "rows": rows}
