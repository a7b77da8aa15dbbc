"""edge-serve under load, against the same work done in-process, in one run on one machine.

1. Reference: the same JPEGs classified by `Classifier` (decode, resize, invoke) in-process on
   T threads, one interpreter each, for --seconds: the in-process rate and median latency.
2. The real server process (`edge-serve DEPLOY --threads T`) on a loopback port, driven by
   concurrent httpx clients (asyncio, closed loop) for --seconds: throughput, p50/p90/p99 and
   errors by status.
3. Open loop at 80 % of that throughput: p50/p90/p99 (against the in-process median).
4. Memory: the server's RSS after a warm-up and again after --rss-requests more requests.

    python -m benchmarks.serve_load RUN/deploy --images DIR --out benchmarks/results/serve

Ratios are what count (the load generator shares the machine with the server, as it would on a
device serving its own camera app).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(a, q) -> float:
    return round(float(np.percentile(np.asarray(a) * 1e3, q)), 2) if len(a) else float("nan")


def in_process(deploy: Path, images: list[bytes], threads: int, seconds: float) -> dict:
    """T threads, each with its own Classifier, classifying the JPEG bytes round-robin."""
    from edge_runtime import Classifier
    from edge_runtime.image import open_image

    clfs = [Classifier(deploy, threads=1) for _ in range(threads)]
    lat: list[list[float]] = [[] for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def work(i: int):
        clf, k = clfs[i], i
        while time.perf_counter() < stop:
            t = time.perf_counter()
            img = open_image(images[k % len(images)], draft_size=clf.size if clf.draft else None)
            clf.invoke(clf.preprocess(img))
            lat[i].append(time.perf_counter() - t)
            k += threads
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = [x for l in lat for x in l]
    return {"requests": len(all_lat), "seconds": round(wall, 2), "rate": round(len(all_lat) / wall, 2),
            "p50_ms": _pct(all_lat, 50), "p90_ms": _pct(all_lat, 90), "p99_ms": _pct(all_lat, 99)}


class ServerProcess:
    def __init__(self, deploy: Path, threads: int, queue: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.serve.cli", str(deploy), "--port",
                                      str(self.port), "--threads", str(threads), "--queue", str(queue),
                                      "--timeout", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("edge-serve did not start: " + self.proc.stderr.read().decode()[-2000:])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def closed_loop(url: str, images: list[bytes], clients: int, seconds: float | None = None,
                      total: int | None = None) -> dict:
    """``clients`` concurrent clients, each sending its next request when the last is answered,
    for ``seconds`` or until ``total`` requests are done."""
    import httpx
    lat, statuses = [], {}
    sent = 0
    stop = time.perf_counter() + (seconds or 1e9)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Content-Type": "image/jpeg"}) as c:
        async def worker(i: int):
            nonlocal sent
            k = i
            while time.perf_counter() < stop and (total is None or sent < total):
                sent += 1
                t = time.perf_counter()
                try:
                    r = await c.post("/v1/classify", content=images[k % len(images)])
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                lat.append(time.perf_counter() - t)
                statuses[key] = statuses.get(key, 0) + 1
                k += clients
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"requests": len(lat), "seconds": round(wall, 2), "throughput": round(len(lat) / wall, 2),
            "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99), "status": statuses}


async def open_loop(url: str, images: list[bytes], rate: float, seconds: float) -> dict:
    """One request every 1/rate s, whatever the answers do (latency at a given offered load)."""
    import httpx
    lat, statuses = [], {}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Content-Type": "image/jpeg"},
                                 limits=httpx.Limits(max_connections=500, max_keepalive_connections=500)) as c:
        async def one(k: int):
            t = time.perf_counter()
            try:
                r = await c.post("/v1/classify", content=images[k % len(images)])
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            lat.append(time.perf_counter() - t)
            statuses[key] = statuses.get(key, 0) + 1
        tasks, t0 = [], time.perf_counter()
        for k in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(k)))
        await asyncio.gather(*tasks)
    return {"offered_rate": round(rate, 2), "requests": len(lat), "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90),
            "p99_ms": _pct(lat, 99), "status": statuses}


def load_images(folder: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    if not files:
        raise SystemExit(f"{folder}: no JPEG files")
    return [p.read_bytes() for p in files]


def run(deploy: Path, images: list[bytes], threads: int, seconds: float, rss_requests: int) -> dict:
    from edge_runtime.benchmark import machine_info
    ref = in_process(deploy, images, threads, seconds)
    srv = ServerProcess(deploy, threads, queue=4 * threads)
    try:
        clients = 2 * threads
        asyncio.run(closed_loop(srv.url, images, clients, total=100))              # warm-up
        rss0 = _rss_mb(srv.proc.pid)
        served = asyncio.run(closed_loop(srv.url, images, clients, seconds=seconds))
        at80 = asyncio.run(open_loop(srv.url, images, 0.8 * served["throughput"], seconds))
        soak = asyncio.run(closed_loop(srv.url, images, clients, total=rss_requests))
        rss1 = _rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    man = json.loads((deploy / "manifest.json").read_text())
    art = next(a for a in man["artifacts"] if a["precision"] == man["default"])
    return {
        "kind": "edgetl-serve-load/1", "deploy": str(deploy), "artifact": art["file"], "sha256": art["sha256"],
        "backbone": man.get("backbone", {}), "machine": machine_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": {"threads": threads, "clients": clients, "seconds": seconds, "images": len(images),
                   "queue": 4 * threads, "client": "httpx AsyncClient on the same machine, loopback"},
        "in_process": ref, "served": served, "at_80_percent": at80,
        "rss_mb": {"after_warmup": round(rss0, 1), f"after_{soak['requests']}_more": round(rss1, 1),
                   "growth_percent": round(100 * (rss1 - rss0) / rss0, 2), "soak": soak},
        "ratios": {"throughput_served_over_in_process": round(served["throughput"] / ref["rate"], 3),
                   "p99_at_80_over_in_process_median": round(at80["p99_ms"] / ref["p50_ms"], 3)},
    }


def markdown(r: dict) -> str:
    m, ref, s, a = r["machine"], r["in_process"], r["served"], r["at_80_percent"]
    rss = r["rss_mb"]
    after = next(k for k in rss if k.startswith("after_") and k != "after_warmup")
    return "\n".join([
        f"# edge-serve load: {r['artifact']} ({r['backbone'].get('name', '')} {r['backbone'].get('alpha', '')}"
        f"@{r['backbone'].get('size', '')})", "",
        f"{m['cpu']} ({m['cores']} cores), {m['runtime']}; {r['method']['threads']} inference threads, "
        f"{r['method']['clients']} closed-loop clients, {r['method']['seconds']} s per phase, "
        f"{r['method']['images']} JPEGs; {r['date']}", "",
        "| | rate (req/s) | p50 ms | p90 ms | p99 ms | statuses |", "|---|---|---|---|---|---|",
        f"| in-process Classifier, same threads | {ref['rate']} | {ref['p50_ms']} | {ref['p90_ms']} | {ref['p99_ms']} | - |",
        f"| edge-serve, closed loop | {s['throughput']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['status']} |",
        f"| edge-serve, open loop at 80 % | {a['offered_rate']} offered | {a['p50_ms']} | {a['p90_ms']} | {a['p99_ms']} | {a['status']} |",
        "",
        f"- served / in-process throughput: **{r['ratios']['throughput_served_over_in_process']}**",
        f"- p99 at 80 % load / in-process median: **{r['ratios']['p99_at_80_over_in_process_median']}**",
        f"- server RSS {rss['after_warmup']} MB after warm-up, {rss[after]} MB {after.replace('_', ' ')} requests: "
        f"**{rss['growth_percent']:+.2f} %** (statuses {rss['soak']['status']})", ""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("deploy", type=Path)
    ap.add_argument("--images", type=Path, help="JPEG folder (default: the run's test split photos)")
    ap.add_argument("--limit", type=int, default=200, help="At most this many JPEGs, held in memory.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rss-requests", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve"))
    a = ap.parse_args(argv)
    folder = a.images
    if folder is None:
        from edge_runtime.filelist import read_file_list
        test = a.deploy.parent / "split" / "test.tsv"
        files = [p for p, _ in read_file_list(test)][: a.limit]
        images = [Path(p).read_bytes() for p in files if str(p).lower().endswith((".jpg", ".jpeg"))]
    else:
        images = load_images(folder, a.limit)
    r = run(a.deploy, images, a.threads, a.seconds, a.rss_requests)
    r["command"] = " ".join(["python -m benchmarks.serve_load", *(argv or sys.argv[1:])])
    from edge_runtime.atomic import write_json, write_text
    name = Path(r["artifact"]).stem
    write_json(a.out / f"{name}.json", r)
    write_text(a.out / f"{name}.md", markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
