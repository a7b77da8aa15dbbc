"""Device-side latency: raw invoke and end-to-end (decoded frame -> top-k), per thread count.

Method: warm-up runs discarded, then ``runs`` timed runs; median and p90 reported. End-to-end
starts from a decoded 640x480 RGB frame (what a camera gives) and includes the resize,
quantization, invoke, dequantization/softmax and top-k. The JSON is what ``edgetl bench merge``
joins with the box-side accuracy of the same artifacts (matched by sha256).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from .classifier import Classifier
from .errors import UserError


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, x86 and ARM)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


INT8_X86 = (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2 only, no VNNI"))
INT8_ARM = (("i8mm", "int8 dot-product + i8mm"), ("asimddp", "int8 dot-product"))


def int8_instructions(flags_text: str | None = None) -> str:
    """The instruction-set feature that decides int8 speed on this CPU, from /proc/cpuinfo's
    ``flags`` (x86) or ``Features`` (ARM) line: VNNI / dot-product make int8 ~2x fp32 speed;
    AVX2 alone (or ARM without dot-product) makes int8 no faster than fp32 under XNNPACK."""
    if flags_text is None:
        try:
            flags_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    flags = set()
    for line in flags_text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags |= set(line.split(":", 1)[1].split())
    for table in (INT8_X86, INT8_ARM):
        for flag, name in table:
            if flag in flags:
                return name
    if "asimd" in flags:
        return "ARM NEON, no int8 dot-product"
    return "unknown"


def machine_info() -> dict:
    cpu = cpu_name()
    from .interpreter import interpreter_class
    _, runtime = interpreter_class()
    from importlib.metadata import PackageNotFoundError, version
    versions = {}
    for dist in ("ai-edge-litert", "tflite-runtime", "tensorflow", "numpy", "pillow"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "runtime": runtime, "versions": versions,
            "int8_instructions": int8_instructions()}


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "runs": len(ms)}


def time_artifact(clf: Classifier, runs: int = 50, warmup: int = 5, frame: np.ndarray | None = None) -> dict:
    """Raw invoke and end-to-end latency of one loaded classifier."""
    if frame is None:
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x = clf.preprocess(frame)
    raw, e2e = [], []
    for i in range(warmup + runs):
        t = time.perf_counter()
        clf.interpreter.set_tensor(clf._in, x)
        clf.interpreter.invoke()
        clf.interpreter.get_tensor(clf._out)
        if i >= warmup:
            raw.append((time.perf_counter() - t) * 1e3)
    for i in range(warmup + runs):
        t = time.perf_counter()
        scores = clf.invoke(clf.preprocess(frame))
        np.argsort(-scores, kind="stable")[:5]
        if i >= warmup:
            e2e.append((time.perf_counter() - t) * 1e3)
    r, e = _stats(raw), _stats(e2e)
    return {"raw_ms": r, "end_to_end_ms": e, "fps": round(1000.0 / e["median"], 2) if e["median"] else None}


def benchmark(deploy, precisions: list[str] | None = None, threads: list[int] | None = None,
              runs: int = 50, warmup: int = 5, verify: bool = True) -> dict:
    """Every (or the chosen) artifact of a deploy folder (or one .tflite) at each thread count."""
    p = Path(deploy)
    from .manifest import load_manifest
    if runs < 1:
        raise UserError(f"--runs {runs}: give 1 or more timed runs per row")
    if p.is_dir():
        man = load_manifest(p)
        arts = [a["precision"] for a in man.data["artifacts"]]
        unknown = sorted(set(precisions or []) - set(arts))
        if unknown:
            raise UserError(f"{p}: no {', '.join(unknown)} artifact here; it has {', '.join(arts)}")
        precisions = [q for q in arts if precisions is None or q in precisions]
    else:
        precisions = [None]
    cores = os.cpu_count() or 1
    threads = threads or sorted({1, cores})
    rows = []
    for prec in precisions:
        for n in threads:
            t0 = time.perf_counter()
            clf = Classifier(p, threads=n, precision=prec, verify=verify)
            load_s = time.perf_counter() - t0
            row = {"artifact": clf.path.name, "precision": clf.precision, "threads": n,
                   "resize": clf.resize_method, "sha256": _sha(clf), "load_s": round(load_s, 4),
                   **time_artifact(clf, runs, warmup)}
            rows.append(row)
    return {"kind": "edgetl-device-benchmark/1", "deploy": str(p), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": {"runs": runs, "warmup": warmup,
                                                                   "frame": "640x480 RGB uint8"},
            "rows": rows}


def save_report(rep: dict, deploy) -> Path | None:
    """Keep a deploy folder's latency beside its artifacts (DEPLOY/benchmark.json, matched to
    artifacts by sha256), so run listings can show it. A read-only folder (or a bare .tflite)
    is left alone: the report was printed anyway."""
    from .atomic import write_json

    p = Path(deploy)
    if not p.is_dir():
        return None
    try:
        write_json(p / "benchmark.json", rep)
    except OSError:
        return None
    return p / "benchmark.json"


def _sha(clf) -> str:
    from .manifest import sha256_file
    return sha256_file(clf.path)


def format_table(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"{m['cpu']} ({m['cores']} cores), {m['runtime']}; latency in ms, "
             f"{rep['method']['runs']} timed runs after {rep['method']['warmup']} warm-up",
             f"{'artifact':<22} {'threads':>7} {'raw med':>8} {'raw p90':>8} {'e2e med':>8} {'e2e p90':>8} {'fps':>7}"]
    for r in rep["rows"]:
        lines.append(f"{r['artifact']:<22} {r['threads']:>7} {r['raw_ms']['median']:>8.2f} {r['raw_ms']['p90']:>8.2f} "
                     f"{r['end_to_end_ms']['median']:>8.2f} {r['end_to_end_ms']['p90']:>8.2f} {r['fps'] or 0:>7.1f}")
    return "\n".join(lines)
