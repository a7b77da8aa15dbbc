"""edge-serve under load, against the same work done in-process, in one run on one machine.

1. Reference: the same JPEGs classified by `Classifier` (decode, resize, invoke) in-process on
   T threads, one interpreter each, for --seconds: the in-process rate and median latency.
2. The real server process (`edge-serve DEPLOY --threads T`) on a loopback port, driven by
   concurrent asyncio clients (closed loop, keep-alive HTTP/1.1) for --seconds: throughput,
   p50/p90/p99, errors by status, and the CPU each side spent per request. Two routes, each
   sent the same JPEGs: `/v1/classify` (the raw JPEG as the body) and the Open Inference
   Protocol's infer with binary tensor data (the JPEG as a binary BYTES tensor, the scores
   answered as binary data), as a standard OIP client sends it.
3. Open loop at 50 % of each route's throughput (p99 against the in-process median: the target)
   and at 80 % (p99 and the 503 count, reported without a target: at 80 % on two shared cores
   the tail is queueing, not the server).
   Phases 1-3 run back to back as one round, --repeats rounds (default 3); each round gives its
   own ratios and the report gives their medians (every round kept).
4. Memory: the server's RSS after a warm-up and again after --rss-requests more requests.

    python -m benchmarks.serve_load RUN/deploy --images DIR --out benchmarks/results/serve

Ratios are what count (the load generator shares the machine with the server, as it would on a
device serving its own camera app).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from trainer.runs import rundir as R


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _drive(coro):
    """Run one load phase with this process's garbage collection paused (as timeit does): a
    full collection here stalls every client for ~10 ms, which showed up as a cluster of slow
    answers that the server never caused."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(coro)
    finally:
        gc.enable()


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
            clf.invoke(clf.preprocess(img, workers=1))   # as the server does: the other threads are busy
            lat[i].append(time.perf_counter() - t)
            k += threads
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    all_lat = [x for l in lat for x in l]
    return {"requests": len(all_lat), "seconds": round(wall, 2), "rate": round(len(all_lat) / wall, 2),
            "p50_ms": _pct(all_lat, 50), "p90_ms": _pct(all_lat, 90), "p99_ms": _pct(all_lat, 99),
            "cpu_ms_per_request": round(1e3 * cpu / len(all_lat), 3)}


MODEL = "model"   # the served model's name in the v2 API


class ServerProcess:
    def __init__(self, deploy: Path, threads: int, queue: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.serve.cli", str(deploy), "--port",
                                      str(self.port), "--threads", str(threads), "--queue", str(queue),
                                      "--timeout", "30", "--name", MODEL], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation only: it
    spends a fraction of httpx's CPU per request, and here the load generator shares the cores
    with the server it measures. (The tests use httpx.)"""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: str = "Content-Type: image/jpeg\r\n") -> tuple[int, bytes]:
        if self.writer is not None:
            try:   # a kept-alive connection the server has since closed: retry once on a new one
                return await self._post(path, body, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
        return await self._post(path, body, headers)

    async def _post(self, path: str, body: bytes, headers: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status, length, close = int(status_line.split()[1]), 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "connection" and v.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class Route:
    """One way of asking the server to classify a JPEG: the path, and each image's body and headers."""

    def __init__(self, name: str, path: str, bodies: list[bytes], headers: list[str]):
        self.name, self.path, self.bodies, self.headers = name, path, bodies, headers

    def request(self, k: int) -> tuple[str, bytes, str]:
        return self.path, self.bodies[k % len(self.bodies)], self.headers[k % len(self.headers)]

    @classmethod
    def v1(cls, images: list[bytes]) -> "Route":
        return cls("v1_classify", "/v1/classify", images, ["Content-Type: image/jpeg\r\n"])

    @classmethod
    def oip_binary(cls, images: list[bytes], model: str) -> "Route":
        """The infer request a standard OIP client sends by default: a JSON header, then the JPEG
        as a binary BYTES tensor; the answer's scores as binary data."""
        from edge_runtime.serve.oip_codec import HEADER_LENGTH, bytes_tensor

        bodies, headers = [], []
        for jpeg in images:
            blob = bytes_tensor([jpeg])
            head = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": len(blob)}}],
                               "parameters": {"binary_data_output": True}}).encode()
            bodies.append(head + blob)
            headers.append(f"Content-Type: application/octet-stream\r\n{HEADER_LENGTH}: {len(head)}\r\n")
        return cls("oip_binary", f"/v2/models/{model}/infer", bodies, headers)


def _host_port(url: str) -> tuple[str, int]:
    hp = url.split("://", 1)[1].rstrip("/")
    host, _, port = hp.rpartition(":")
    return host, int(port)


async def closed_loop(url: str, route: Route, clients: int, seconds: float | None = None,
                      total: int | None = None) -> dict:
    """``clients`` concurrent clients, each sending its next request when the last is answered,
    for ``seconds`` or until ``total`` requests are done."""
    host, port = _host_port(url)
    lat, statuses = [], {}
    sent = 0
    stop = time.perf_counter() + (seconds or 1e9)

    async def worker(i: int):
        nonlocal sent
        conn, k = Connection(host, port), i
        while time.perf_counter() < stop and (total is None or sent < total):
            sent += 1
            t = time.perf_counter()
            try:
                key = str((await conn.post(*route.request(k)))[0])
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                key = type(e).__name__
                conn.close()
            lat.append(time.perf_counter() - t)
            statuses[key] = statuses.get(key, 0) + 1
            k += clients
        conn.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "seconds": round(wall, 2), "throughput": round(len(lat) / wall, 2),
            "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99), "status": statuses}


async def open_loop(url: str, route: Route, rate: float, seconds: float) -> dict:
    """One request every 1/rate s, whatever the answers do (latency at a given offered load);
    idle keep-alive connections are reused, new ones opened when all are busy."""
    host, port = _host_port(url)
    lat, statuses, idle, parts = [], {}, [], []

    async def one(k: int):
        conn = idle.pop() if idle else Connection(host, port)
        t = time.perf_counter()
        split = None
        try:
            code, body = await conn.post(*route.request(k))
            key = str(code)
            idle.append(conn)
            if code == 200 and route.name == "v1_classify":   # its answer carries the server's split
                split = json.loads(body)["latency_ms"]
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            key = type(e).__name__
            conn.close()
        lat.append(time.perf_counter() - t)
        parts.append(split)
        statuses[key] = statuses.get(key, 0) + 1
    tasks, t0 = [], time.perf_counter()
    for k in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(k)))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    return {"offered_rate": round(rate, 2), "requests": len(lat), "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90),
            "p99_ms": _pct(lat, 99), "status": statuses, "tail": tail_breakdown(lat, parts)}


def tail_breakdown(lat: list[float], parts: list[dict | None]) -> dict:
    """Where the slowest 1 % of the answered requests spent their time, in mean ms, next to
    the same for the median request's neighbours: waiting for an inference thread (queue), the
    work itself (decode + resize + invoke), the rest of the server's handler, and outside the
    handler (HTTP parsing, both event loops waiting for a core, loopback). Each answer carries
    the server's own split (``latency_ms``)."""
    rows = [(l * 1e3, p) for l, p in zip(lat, parts) if p]
    if not rows:
        return {}
    rows.sort(key=lambda r: r[0])

    def mean_split(sel):
        q = np.mean([p.get("queue", 0.0) for _, p in sel])
        work = np.mean([p.get("decode", 0.0) + p.get("resize", 0.0) + p.get("invoke", 0.0) for _, p in sel])
        handler = np.mean([p["total"] for _, p in sel])
        total = np.mean([l for l, _ in sel])
        return {"n": len(sel), "total": round(float(total), 3), "queue": round(float(q), 3),
                "work": round(float(work), 3), "handler_rest": round(float(handler - q - work), 3),
                "outside_handler": round(float(total - handler), 3)}
    k = max(1, int(round(0.01 * len(rows))))
    mid = len(rows) // 2
    return {"slowest_1_percent": mean_split(rows[-k:]), "median_band": mean_split(rows[max(0, mid - k // 2): mid + k // 2 + 1])}


def load_images(folder: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    if not files:
        raise SystemExit(f"{folder}: no JPEG files")
    return [p.read_bytes() for p in files]


def run(deploy: Path, images: list[bytes], threads: int, seconds: float, rss_requests: int,
        repeats: int = 3) -> dict:
    """``repeats`` rounds, each measuring back to back the in-process rate and, per route, the
    served closed-loop throughput and the open loop at 50 % and 80 % of it, so each round's ratios
    compare measurements a minute or two apart. On this shared VM the machine's speed drifts by
    tens of percent within minutes (the in-process rate measured 489-547 req/s in three runs a
    minute apart), so a reference taken in a separate block of runs can be several minutes and a
    different machine speed away from the phase it is compared with. Each ratio is reported as the
    median of the rounds' ratios, every round kept."""
    from edge_runtime.benchmark import machine_info
    srv = ServerProcess(deploy, threads, queue=4 * threads)
    routes = [Route.v1(images), Route.oip_binary(images, MODEL)]
    rounds, clients = [], 2 * threads
    try:
        for route in routes:
            _drive(closed_loop(srv.url, route, clients, total=100))          # warm-up
        rss0 = _rss_mb(srv.proc.pid)
        for _ in range(repeats):
            ref = in_process(deploy, images, threads, seconds)                # the server idles meanwhile
            rounds.append({"in_process": ref, **{r.name: _route_phases(srv, r, clients, seconds) for r in routes}})
            rounds[-1]["ratios"] = {f"{k}_{r.name}": round(rounds[-1][r.name][what] / ref[ref_key], 3)
                                    for r in routes for k, what, ref_key in RATIOS}
        soak = _drive(closed_loop(srv.url, routes[0], clients, total=rss_requests // 2))
        soak_oip = _drive(closed_loop(srv.url, routes[1], clients, total=rss_requests - rss_requests // 2))
        rss1 = _rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    man = json.loads((deploy / "manifest.json").read_text())
    art = next(a for a in man["artifacts"] if a["precision"] == man["default"])
    ratios = {k: float(np.median([r["ratios"][k] for r in rounds])) for k in rounds[0]["ratios"]}
    soak_n = soak["requests"] + soak_oip["requests"]
    return {
        "kind": "edgetl-serve-load/3", "deploy": str(deploy), "artifact": art["file"], "sha256": art["sha256"],
        "backbone": man.get("backbone", {}), "machine": machine_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": {"threads": threads, "clients": clients, "seconds": seconds, "images": len(images),
                   "queue": 4 * threads, "repeats": repeats, "routes": [r.name for r in routes],
                   "client": "asyncio keep-alive HTTP/1.1 clients in one process on the same machine, loopback",
                   "rounds": "in-process, then per route closed loop, open loop at 50 % and 80 % back to back; "
                             "ratios per round, median"},
        "rounds": rounds,
        "rss_mb": {"after_warmup": round(rss0, 1), f"after_{soak_n}_more": round(rss1, 1),
                   "growth_percent": round(100 * (rss1 - rss0) / rss0, 2),
                   "soak": {"v1_classify": soak, "oip_binary": soak_oip}},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


# (ratio name, the route's measure, the in-process measure it is divided by)
RATIOS = [("throughput_over_in_process", "throughput", "rate"),
          ("p99_at_50_over_in_process_median", "p99_at_50", "p50_ms"),
          ("p99_at_80_over_in_process_median", "p99_at_80", "p50_ms")]


def _route_phases(srv, route: Route, clients: int, seconds: float) -> dict:
    cpu_srv, cpu_cli = _cpu_s(srv.proc.pid), time.process_time()
    served = _drive(closed_loop(srv.url, route, clients, seconds=seconds))
    served["cpu_ms_per_request"] = {
        "server": round(1e3 * (_cpu_s(srv.proc.pid) - cpu_srv) / served["requests"], 3),
        "load_generator": round(1e3 * (time.process_time() - cpu_cli) / served["requests"], 3)}
    at50 = _drive(open_loop(srv.url, route, 0.5 * served["throughput"], seconds))
    at80 = _drive(open_loop(srv.url, route, 0.8 * served["throughput"], seconds))
    return {"served": served, "at_50_percent": at50, "at_80_percent": at80, "throughput": served["throughput"],
            "p99_at_50": at50["p99_ms"], "p99_at_80": at80["p99_ms"]}


def markdown(r: dict) -> str:
    m, rss = r["machine"], r["rss_mb"]
    after = next(k for k in rss if k.startswith("after_") and k != "after_warmup")
    lines = [
        f"# edge-serve load: {r['artifact']} ({r['backbone'].get('name', '')} {r['backbone'].get('alpha', '')}"
        f"@{r['backbone'].get('size', '')})", "",
        f"{m['cpu']} ({m['cores']} cores), {m['runtime']}; {r['method']['threads']} inference threads, "
        f"{r['method']['clients']} closed-loop clients, {r['method']['seconds']} s per phase, "
        f"{r['method']['images']} JPEGs; {r['date']}", "",
        f"{len(r['rounds'])} rounds, each measuring its phases back to back; each round's ratios compare its own "
        "phases, and the ratios below are the medians over the rounds. Routes: `v1_classify` (the JPEG as the "
        "body) and `oip_binary` (Open Inference Protocol infer, the JPEG as a binary BYTES tensor, binary scores).",
        "", "| round | route | in-process rate (req/s), p50 ms | served (req/s) | at 50 %: p50 / p99 ms | "
        "at 80 %: p50 / p99 ms, statuses | throughput ratio | p99 at 50 % / in-process median |",
        "|---|---|---|---|---|---|---|---|"]
    for i, rd in enumerate(r["rounds"], 1):
        ref = rd["in_process"]
        for name in r["method"]["routes"]:
            x, a5, a8 = rd[name], rd[name]["at_50_percent"], rd[name]["at_80_percent"]
            lines.append(f"| {i} | {name} | {ref['rate']}, {ref['p50_ms']} | {x['throughput']} | "
                         f"{a5['p50_ms']} / {a5['p99_ms']} | {a8['p50_ms']} / {a8['p99_ms']}, {a8['status']} | "
                         f"{rd['ratios']['throughput_over_in_process_' + name]} | "
                         f"{rd['ratios']['p99_at_50_over_in_process_median_' + name]} |")
    rt = r["ratios"]
    lines += [""] + [f"- {name}: served / in-process throughput **{rt['throughput_over_in_process_' + name]}**, "
                     f"p99 at 50 % load / in-process median **{rt['p99_at_50_over_in_process_median_' + name]}**, "
                     f"p99 at 80 % / in-process median {rt['p99_at_80_over_in_process_median_' + name]} (no target)"
                     for name in r["method"]["routes"]]
    cpu = [(rd["in_process"]["cpu_ms_per_request"], rd[n]["served"]["cpu_ms_per_request"], n)
           for rd in r["rounds"] for n in r["method"]["routes"]]
    soak = {k: v["status"] for k, v in rss["soak"].items()}
    lines += [
        "- CPU per request, in-process vs served (server process + load generator, same cores): "
        + "; ".join(f"{n} {a} vs {b['server']} + {b['load_generator']} ms" for a, b, n in cpu),
        f"- server RSS {rss['after_warmup']} MB after warm-up, {rss[after]} MB {after.replace('_', ' ')} requests "
        f"(both routes): **{rss['growth_percent']:+.2f} %** (statuses {soak})", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("deploy", type=Path)
    ap.add_argument("--images", type=Path, help="JPEG folder (default: the run's test split photos)")
    ap.add_argument("--limit", type=int, default=200, help="At most this many JPEGs, held in memory.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rss-requests", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three measured phases (the median ratio is reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve"))
    a = ap.parse_args(argv)
    folder = a.images
    if folder is None:
        from edge_runtime.filelist import read_file_list
        test = a.deploy.parent / R.SPLIT / "test.tsv"
        files = [p for p, _ in read_file_list(test)][: a.limit]
        images = [Path(p).read_bytes() for p in files if str(p).lower().endswith((".jpg", ".jpeg"))]
    else:
        images = load_images(folder, a.limit)
    r = run(a.deploy, images, a.threads, a.seconds, a.rss_requests, a.repeats)
    r["command"] = " ".join(["python -m benchmarks.serve_load", *(argv or sys.argv[1:])])
    from benchmarks.report import save_report
    save_report(a.out, Path(r["artifact"]).stem, r, markdown(r))


if __name__ == "__main__":
    main()
