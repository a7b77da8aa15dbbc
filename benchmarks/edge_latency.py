"""Is the interpreter, not Python, the bottleneck of edge-predict? One run, reported as ratios.

Against one deploy folder (MobileNetV2 1.0@224 int8 in the issue's acceptance):
- stream: decoded 640x480 frames through ``run_stream`` (capture thread resizing beside
  inference) vs the raw-invoke rate at the same interpreter thread count (target >= 0.9x);
- single frame: end-to-end (decoded frame -> top-k) minus raw invoke (target <= 1 ms);
- JPEG draft (DCT-scaled) vs full decode + resize of real photos saved at 640x480 and 1280x960;
- peak RSS of an ``edge-predict`` process classifying photos (target <= 120 MB);
- ``import edge_runtime`` + model load in a fresh process (target <= 0.3 s).

    python -m benchmarks.edge_latency RUN/deploy --precision int8
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "assets" / "samples"


def _median_ms(fn, runs: int, warmup: int = 5) -> float:
    out = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1e3)
    return float(np.median(out))


def _frames(n: int) -> list[np.ndarray]:
    photos = [np.asarray(Image.open(p).convert("RGB").resize((640, 480))) for p in sorted(SAMPLES.glob("*.jpg"))]
    return [photos[i % len(photos)] for i in range(n)]


def stream_vs_raw(deploy, precision, threads: int, frames: int) -> dict:
    from edge_runtime import Classifier
    from edge_runtime.stream import run_stream

    clf = Classifier(deploy, threads=threads, precision=precision)
    x = clf.preprocess(_frames(1)[0])
    raw = _median_ms(lambda: clf.invoke(x), frames)
    data = _frames(frames)
    run_stream(clf, iter(data[:10]), lambda *a: None)              # warm-up
    t = time.perf_counter()
    stats = run_stream(clf, iter(data), lambda *a: None)
    fps = stats.frames / (time.perf_counter() - t)
    single = _median_ms(lambda: clf.classify(data[0], 5), frames)
    prep = _median_ms(lambda: clf.preprocess(data[0]), frames)   # 640x480 -> model size (+ quantize)
    prep1 = _median_ms(lambda: clf.preprocess(data[0], workers=1), frames)
    return {"threads": threads, "preprocess_ms": round(prep, 3), "preprocess_one_thread_ms": round(prep1, 3),
            "raw_invoke_ms": round(raw, 3), "raw_rate_fps": round(1000 / raw, 2),
            "stream_fps": round(fps, 2), "stream_over_raw": round(fps / (1000 / raw), 3),
            "single_frame_end_to_end_ms": round(single, 3), "overhead_ms": round(single - raw, 3)}


def draft_vs_full(size: int, runs: int) -> dict:
    from edge_runtime.image import load_image

    out = {}
    for w, h in ((640, 480), (1280, 960)):
        blobs = []
        for p in sorted(SAMPLES.glob("*.jpg")):
            b = io.BytesIO()
            Image.open(p).convert("RGB").resize((w, h)).save(b, "JPEG", quality=90)
            blobs.append(b.getvalue())
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, b in enumerate(blobs):
                f = Path(tmp) / f"{i}.jpg"
                f.write_bytes(b)
                files.append(f)
            full = _median_ms(lambda: [load_image(f, size) for f in files], runs) / len(files)
            draft = _median_ms(lambda: [load_image(f, size, draft=True) for f in files], runs) / len(files)
            diff = max(float(np.abs(load_image(f, size).astype(int) - load_image(f, size, draft=True)).mean())
                       for f in files)
        out[f"{w}x{h}"] = {"full_ms": round(full, 3), "draft_ms": round(draft, 3),
                           "speedup": round(full / draft, 2), "max_mean_abs_pixel_diff": round(diff, 2)}
    return out


def peak_rss_mb(deploy, precision) -> float:
    photos = [str(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    code = ("import resource, subprocess, sys\n"
            f"subprocess.run({[sys.executable, '-m', 'edge_runtime.cli', str(deploy), '--precision', precision, *photos]!r},"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(r.stdout.strip()) / 1024.0


def import_and_load_s(deploy, precision, repeats: int = 5) -> float:
    code = ("import time\nt = time.perf_counter()\nfrom edge_runtime import Classifier\n"
            f"Classifier({str(deploy)!r}, precision={precision!r})\nprint(time.perf_counter() - t)\n")
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  cwd=ROOT).stdout.strip()) for _ in range(repeats)]
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("deploy")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/edge_latency.json")
    a = ap.parse_args(argv)

    import os

    from edge_runtime import Classifier
    from edge_runtime.benchmark import machine_info

    clf = Classifier(a.deploy, precision=a.precision)
    res = {"deploy": str(a.deploy), "artifact": clf.path.name, "machine": machine_info(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "stream": [stream_vs_raw(a.deploy, a.precision, n, a.frames) for n in sorted({1, os.cpu_count() or 1})],
           "jpeg_decode": draft_vs_full(clf.size, 20),
           "peak_rss_mb": round(peak_rss_mb(a.deploy, a.precision), 1),
           "import_and_load_s": round(import_and_load_s(a.deploy, a.precision), 4)}
    one = res["stream"][0]
    res["targets"] = {
        "stream >= 0.9x raw invoke rate (1 thread)": one["stream_over_raw"] >= 0.9,
        "single-frame overhead <= 1 ms": one["overhead_ms"] <= 1.0,
        "peak RSS <= 120 MB": res["peak_rss_mb"] <= 120,
        "import + load <= 0.3 s": res["import_and_load_s"] <= 0.3,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)
    for s in res["stream"]:
        print(f"threads {s['threads']}: raw invoke {s['raw_invoke_ms']:.2f} ms ({s['raw_rate_fps']:.1f}/s), stream "
              f"{s['stream_fps']:.1f} fps = {s['stream_over_raw']:.2f}x raw; single frame end-to-end "
              f"{s['single_frame_end_to_end_ms']:.2f} ms (+{s['overhead_ms']:.2f} ms, of which resize {s['preprocess_ms']:.2f} ms on "
              f"{min(4, os.cpu_count() or 1)} threads, {s['preprocess_one_thread_ms']:.2f} ms on one)")
    for k, v in res["jpeg_decode"].items():
        print(f"JPEG {k} -> {clf.size}px: full {v['full_ms']:.2f} ms, draft {v['draft_ms']:.2f} ms "
              f"({v['speedup']:.2f}x), mean |pixel diff| <= {v['max_mean_abs_pixel_diff']}")
    print(f"peak RSS {res['peak_rss_mb']} MB; import + load {res['import_and_load_s']:.3f} s")
    for k, ok in res["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    return 0 if all(res["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
