"""Prometheus metrics of the service, through prometheus-client (never hand-written text).

With several worker processes (`--workers N`), prometheus-client's multiprocess mode sums them:
the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start.
"""
from __future__ import annotations

import os

BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, model_name: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        kw = {"registry": reg} if reg is not None else {}
        self.requests = Counter("edge_serve_requests_total", "HTTP requests answered, by route and status",
                                ["route", "status"], **kw)
        self.latency = Histogram("edge_serve_request_seconds", "Time from arrival to answer, by route",
                                 ["route"], buckets=BUCKETS, **kw)
        self.queue = Gauge("edge_serve_queue_depth", "Requests waiting for an inference thread",
                           multiprocess_mode="livesum", **kw)
        self.swaps = Counter("edge_serve_model_swaps_total", "Model reloads, by outcome", ["outcome"], **kw)
        self.model_info = Gauge("edge_serve_model_info", "The loaded model (value 1), labelled by its sha256",
                                ["model", "sha256", "precision", "version"], multiprocess_mode="liveall", **kw)
        self.name = model_name
        self._labels = None

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def depth(self, n: int) -> None:
        self.queue.set(n)

    def swap(self, ok: bool) -> None:
        self.swaps.labels("loaded" if ok else "refused").inc()

    def model(self, gen) -> None:
        if self._labels is not None:
            if self.multiprocess:   # remove() cannot reach the other processes' files: mark it unloaded
                self.model_info.labels(*self._labels).set(0)
            else:
                self.model_info.remove(*self._labels)
        self._labels = (self.name, gen.sha256, gen.precision, str(gen.number))
        self.model_info.labels(*self._labels).set(1)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        if self.multiprocess:
            from prometheus_client import multiprocess
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
