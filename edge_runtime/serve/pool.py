"""Inference workers behind the HTTP service: one interpreter per thread, a bounded backlog, and
model generations that can be swapped while requests are in flight.

A request is admitted only while fewer than ``threads + queue`` requests are between admission and
answer (decoding, waiting or running); otherwise it is refused at once (the server answers 503
with Retry-After). Memory therefore stays bounded however many clients push. Each worker thread
owns one interpreter of every loaded generation (an interpreter is never shared between
threads); a job carries the generation it was preprocessed for, so a swap lets in-flight requests
finish on the old model while new ones get the new one.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..classifier import Classifier
from ..cores import usable_cores
from ..errors import UserError
from ..manifest import load_manifest


class Overloaded(Exception):
    """Every slot is taken: the caller should retry later."""


@dataclass
class Generation:
    """One loaded model: a Classifier per worker thread, all from the same verified file."""
    number: int
    classifiers: list[Classifier]
    sha256: str
    precision: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def first(self) -> Classifier:
        return self.classifiers[0]


def load_generation(deploy: Path, threads: int, number: int, precision: str | None = None) -> Generation:
    """Load ``threads`` interpreters of the deploy folder's artifact, each checked against the
    manifest's sha256 (a damaged or half-copied file raises UserError; nothing is swapped)."""
    deploy = Path(deploy)
    if not deploy.is_dir():
        raise UserError(f"{deploy}: not a deploy folder (expected the folder `edgetl convert` wrote)")
    man = load_manifest(deploy)
    art = man.artifact(precision)
    clfs = [Classifier(deploy, threads=1, precision=precision, verify=True) for _ in range(threads)]
    return Generation(number=number, classifiers=clfs, sha256=art.sha256, precision=art.precision)


@dataclass
class _Job:
    prepare: Callable[[Classifier], tuple[np.ndarray, dict]]   # decode + resize, on the worker thread
    generation: Generation
    future: Future
    enqueued: float


def core_plan(threads: int, pin: bool = True) -> list[int] | None:
    """The core each inference thread is pinned to, or None to leave placement to the OS.

    Pinning only when this process's threads exactly fill the cores it may use (one process
    owning the box, the default). Left to the OS, a busy interpreter is now and then stalled
    for a few ms (a decode of 0.5 ms was seen taking 5 ms), likely sharing a core with the
    other interpreter while the HTTP loop holds the second, and every request queued behind it
    waits. Measured on a noisy 2-core VM, open loop at 480
    req/s: p99 lower pinned in 6 of 6 paired runs (median 7.0 against 9.5 ms); at 80 % of each
    server's own closed-loop rate, lower in 3 of 4 (median 8.3 against 9.0 ms), throughput within
    the run-to-run spread (510-625 req/s either way). With fewer threads than cores (several
    processes, or cores left to other programs) there is no one right placement, so none."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None
    cores = usable_cores()
    return cores if len(cores) == threads > 1 else None


def _pin_current_thread(core: int | None) -> None:
    if core is None:
        return
    try:
        os.sched_setaffinity(threading.get_native_id(), {core})
    except OSError:   # a container that forbids it: run unpinned
        pass


class InferencePool:
    def __init__(self, deploy: Path, threads: int = 1, queue_size: int = 8, precision: str | None = None,
                 pin: bool = True):
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        if queue_size < 0:
            raise UserError(f"--queue must be 0 or more, got {queue_size}")
        self.deploy, self.threads, self.queue_size, self.precision = Path(deploy), threads, queue_size, precision
        self.current = load_generation(self.deploy, threads, 1, precision)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._slots = threading.Semaphore(threads + queue_size)
        self._swap = threading.Lock()
        self._depth = 0
        self._depth_lock = threading.Lock()
        self.cores = core_plan(threads, pin)
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"infer-{i}", daemon=True)
                         for i in range(threads)]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------------ admission
    def admit(self) -> None:
        """Take a slot or raise Overloaded; every admitted request must call ``release`` once."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded()

    def release(self) -> None:
        self._slots.release()

    @property
    def queue_depth(self) -> int:
        return self._depth

    # ------------------------------------------------------------------ inference
    def submit(self, prepare: Callable[[Classifier], tuple[np.ndarray, dict]], generation: Generation) -> Future:
        """Queue one image: a worker thread runs ``prepare(its classifier) -> (x, timings)`` (decode
        and resize: decoding runs beside the other threads' inference) and then the model. The
        future's result: (scores, timings in ms with queue and invoke added)."""
        fut: Future = Future()
        with self._depth_lock:
            self._depth += 1
        self._jobs.put(_Job(prepare, generation, fut, time.perf_counter()))
        return fut

    def _work(self, i: int) -> None:
        _pin_current_thread(self.cores[i] if self.cores else None)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._depth_lock:
                self._depth -= 1
            if not job.future.set_running_or_notify_cancel():   # its request timed out while waiting
                continue
            waited = time.perf_counter() - job.enqueued
            clf = job.generation.classifiers[i]
            try:
                x, timings = job.prepare(clf)
                t = time.perf_counter()
                scores = clf.invoke(x)
                timings.update(queue=waited * 1e3, invoke=(time.perf_counter() - t) * 1e3)
                job.future.set_result((scores, timings))
            except BaseException as e:  # noqa: BLE001 - the worker must survive any one request
                job.future.set_exception(e)

    # ------------------------------------------------------------------ hot swap
    def reload(self) -> tuple[Generation, Generation]:
        """Re-read the deploy folder and switch to it; returns (old, new). A damaged folder raises
        UserError and the current model stays."""
        with self._swap:
            old = self.current
            new = load_generation(self.deploy, self.threads, old.number + 1, self.precision)
            self.current = new
            return old, new

    def close(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
