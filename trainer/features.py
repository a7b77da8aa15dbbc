"""Frozen-backbone features: computed once per split, on the fastest engine that gives the same
numbers, and written to disk in chunks so a folder of any size never has to fit in memory.

On a CPU the frozen backbone (with its baked preprocessing and pooling) runs about three times
faster as an fp32 .tflite on LiteRT/XNNPACK than in Keras' CPU forward pass (MobileNetV2 1.0@224
on 2 cores: ~430 against ~150 images/s). So ``auto`` converts it once per (architecture, weights,
converter and runtime versions), keeps the .tflite in the user's cache, and runs one interpreter
per core, each thread decoding its own images beside the others' inference. Before a run trusts
LiteRT, its features are compared with Keras' on a few training images; above ``TOLERANCE`` the
run falls back to Keras and says so. On a GPU, or on a backend the TFLite converter cannot read,
Keras computes the features. When a previous run left the extractor, extraction starts before
Keras has built the model (``Speculation``), and is kept only once the exact key and the check
confirm it.

Each split's features go to ``RUN/cache/features_<split>_<key>.npy``: chunks are written at
their place as they finish and the file is renamed into place when complete, then read
memory-mapped. A killed run resumes at the first chunk not recorded as written.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.atomic import replacing, write_json
from edge_runtime.errors import UserError
from edge_runtime.image import load_image
from edge_runtime.log import Progress, log

from .data.pipeline import cores

ENGINES = ("auto", "keras", "litert")
TOLERANCE = 1e-4          # max relative difference LiteRT may have from Keras on the check sample
CHECK_IMAGES = 16         # training images both engines compute before a run trusts LiteRT
CHUNK = 256               # the most images per chunk written (and per resume step)
MIN_CHUNK = 16
CHUNKS_PER_SPLIT = 32     # a split is cut into about this many chunks (see chunk_size)
ENGINE_FILE = "features_engine.json"


def cache_dir() -> Path:
    """Where converted feature extractors are kept between runs: $EDGETL_CACHE, else
    $XDG_CACHE_HOME/edgetl, else ~/.cache/edgetl."""
    if os.environ.get("EDGETL_CACHE"):
        return Path(os.environ["EDGETL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgetl"


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max over images of max|a - b| / max|b|: the error of ``a`` relative to each feature
    vector's own scale (element-wise ratios blow up on the many near-zero pooled features)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not len(b):
        return 0.0
    scale = np.maximum(np.abs(b).max(axis=1), 1e-12)
    return float((np.abs(a - b).max(axis=1) / scale).max())


# ------------------------------------------------------------------------- the LiteRT engine
def _versions() -> dict:
    """The converter's and runtime's versions, read from package metadata (no import needed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"format": 1}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "tflite-runtime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def extractor_key(model, identity: dict) -> str:
    """What decides the converted extractor's numbers: the architecture facts, every weight, and
    the versions of the converter and runtime that produce and run it."""
    h = hashlib.sha256(json.dumps({**identity, **_versions()}, sort_keys=True).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:20]


def prekey(identity: dict, weights: str, seed: int) -> str:
    """A key known before the Keras model is built (the weights named, not read): it finds the
    extractor a previous run converted, so extraction can start while Keras builds the model.
    The exact key (``extractor_key``) confirms the guess before any feature is used."""
    stamp = weights
    p = Path(weights)
    if weights not in ("imagenet", "none") and p.is_file():
        st = p.stat()
        stamp = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    body = {**identity, **_versions(), "weights": stamp, "seed": seed if weights == "none" else None}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def _index_path() -> Path:
    return cache_dir() / "features" / "index.json"


def remembered(pre: str) -> tuple[str, Path] | None:
    """(exact key, .tflite) a previous run recorded for this pre-key, if the file is still there."""
    try:
        key = json.loads(_index_path().read_text()).get(pre)
    except (OSError, ValueError):
        return None
    path = cache_dir() / "features" / f"{key}.tflite"
    return (key, path) if key and path.exists() else None


def remember(pre: str, key: str) -> None:
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        index = {}
    index[pre] = key
    write_json(_index_path(), index)


def converted_extractor(model, identity: dict, key: str | None = None) -> tuple[Path, bool, float]:
    """(path, was it cached, seconds spent converting): ``model`` (image -> pooled features) as an
    fp32 .tflite with float input, converted once per key and kept in ``cache_dir()``."""
    from .export import float_tflite_bytes

    path = cache_dir() / "features" / f"{key or extractor_key(model, identity)}.tflite"
    if path.exists():
        return path, True, 0.0
    t = time.time()
    data = float_tflite_bytes(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return path, False, time.time() - t


class LiteRTExtractor:
    """Features of uint8 image batches from a converted extractor: one interpreter per calling
    thread (LiteRT releases the GIL while it runs, so threads use every core)."""

    def __init__(self, path: Path, threads_each: int = 1):
        from edge_runtime.interpreter import load_interpreter

        self.path, self.threads_each = Path(path), threads_each
        self._local = threading.local()
        self._load = load_interpreter
        self.width = int(self._interpreter().get_output_details()[0]["shape"][-1])

    def _interpreter(self):
        it = getattr(self._local, "it", None)
        if it is None:
            it = self._local.it = self._load(self.path, self.threads_each)
        return it

    def __call__(self, images: np.ndarray) -> np.ndarray:
        it = self._interpreter()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        out = np.empty((len(images), self.width), np.float32)
        for k, img in enumerate(images):
            it.set_tensor(i, img[None].astype(np.float32))
            it.invoke()
            out[k] = it.get_tensor(o)[0]
        return out


# ------------------------------------------------------------------------- choosing an engine
@dataclass
class Engine:
    """How this run computes its features, and the evidence for it (saved in the run)."""
    name: str                                   # "keras" | "litert"
    requested: str
    reason: str
    tflite: str | None = None
    tflite_cached: bool | None = None
    convert_s: float | None = None
    checked_images: int = 0
    max_relative_difference: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _litert_unavailable(hw) -> str | None:
    """Why ``auto`` keeps Keras here (None: LiteRT can be used)."""
    if hw is not None and hw.gpus:
        return "a GPU computes the features in Keras"
    if hw is not None and hw.processes > 1:
        return "multi-worker training computes the features in Keras"
    if hw is not None and hw.backend != "tensorflow":
        return f"the {hw.backend} backend: the TFLite converter reads TensorFlow models"
    try:
        from edge_runtime.interpreter import interpreter_class
        if interpreter_class()[1] == "tensorflow.lite":
            return "no LiteRT interpreter installed (pip install 'edgetl[edge]')"
    except UserError as e:
        return str(e)
    return None


def choose_engine(run: Path, requested: str, features_model, identity: dict, sample: list[str], size: int,
                  method: str, *, hw=None, pre: str | None = None, speculation: "Speculation | None" = None) -> Engine:
    """Decide (once per run, recorded in RUN/cache) which engine computes the features. LiteRT is
    used only after its features on ``sample`` match Keras' within TOLERANCE. ``speculation``:
    extraction already started from the extractor a previous run left (used only when its key is
    this model's exact key); ``pre``: the pre-key under which this model's extractor is recorded."""
    if requested not in ENGINES:
        raise UserError(f"unknown --features {requested!r}; use one of {', '.join(ENGINES)}")
    saved = Path(run) / "cache" / ENGINE_FILE
    if saved.exists():
        d = json.loads(saved.read_text())
        if d.get("requested") == requested and (d["name"] != "litert" or Path(d["tflite"]).exists()):
            return Engine(**d)
    engine = _decide(requested, features_model, identity, sample, size, method, hw, pre=pre, speculation=speculation)
    write_json(saved, engine.to_dict())
    return engine


def _decide(requested, features_model, identity, sample, size, method, hw, *, pre, speculation) -> Engine:
    if requested == "keras":
        return Engine("keras", requested, "asked for with --features keras")
    why_not = _litert_unavailable(hw)
    if why_not and requested == "auto":
        return Engine("keras", requested, why_not)
    try:
        key = extractor_key(features_model, identity)
        if speculation is not None and speculation.key == key:
            path, hit, secs = speculation.path, True, 0.0
        else:
            path, hit, secs = converted_extractor(features_model, identity, key)
        if pre:
            remember(pre, key)
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        msg = f"the backbone could not be converted for LiteRT ({str(e).splitlines()[0][:160]})"
        if requested == "litert":
            raise UserError(f"--features litert: {msg}; use --features keras") from None
        log(f"note: {msg}; features computed in Keras")
        return Engine("keras", requested, msg)
    from .data.pipeline import load_arrays

    x = load_arrays(sample, size, method)
    x32 = x.astype(np.float32)
    if hw is None or hw.replicas == 1:
        # one batch: predict_on_batch's first call costs a third of predict()'s (no data adapter,
        # no iterator function to trace), and this check runs on every run
        keras_f = np.asarray(features_model.predict_on_batch(x32), np.float32)
    else:   # under MirroredStrategy Keras' predict_on_batch gave 32 rows for 16 images on 2 replicas
        keras_f = np.asarray(features_model.predict(x32, verbose=0, batch_size=32), np.float32)
    lite_f = LiteRTExtractor(path, cores())(x)
    diff = relative_difference(lite_f, keras_f)
    engine = Engine("litert", requested, "CPU: LiteRT/XNNPACK", tflite=str(path), tflite_cached=hit,
                    convert_s=round(secs, 2), checked_images=len(sample), max_relative_difference=diff)
    if diff > TOLERANCE:
        engine.name, engine.reason = "keras", (f"LiteRT features differ from Keras by {diff:.2e} (> {TOLERANCE:g}) "
                                               f"on {len(sample)} training images")
        log(f"note: {engine.reason}; features computed in Keras")
    return engine


class Speculation:
    """Feature extraction started from the extractor a previous run converted, on background
    threads, while this run builds its Keras model (seconds of graph building and weight loading
    that would otherwise come first). Nothing it writes is used unless ``choose_engine`` confirms
    the extractor's exact key and Keras agrees on the check sample; otherwise ``discard``."""

    def __init__(self, key: str, path: Path, jobs: list[tuple[Path, list[str], str]], size: int, method: str):
        self.key, self.path, self.jobs = key, Path(path), jobs
        self.error: BaseException | None = None
        self._stop, self._kept = threading.Event(), False
        extractor = LiteRTExtractor(self.path)
        inner = litert_compute(extractor, size, method)

        def compute(paths):
            if self._stop.is_set():
                raise _Cancelled()
            return inner(paths)
        self._width, self._compute = extractor.width, compute
        self._thread = threading.Thread(target=self._run, name="edgetl-features", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            write_splits(self.jobs, self._width, self._compute, cores())
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = e

    def join(self) -> None:
        """Wait for it; from here on its files are the run's own."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        self._kept = True

    def discard(self) -> None:
        """Stop, and remove everything it wrote (nothing, once ``join`` kept it)."""
        if self._kept:
            return
        self._stop.set()
        self._thread.join()
        for dest, _, _ in self.jobs:
            for f in (dest, dest.with_name(dest.stem + ".partial.npy"), dest.with_name(dest.stem + ".done.json")):
                f.unlink(missing_ok=True)


class _Cancelled(Exception):
    pass


def speculate(requested: str, identity: dict, weights: str, seed: int, jobs, size: int, method: str,
              *, hw=None) -> tuple[str, Speculation | None]:
    """(pre-key, a started Speculation or None when no converted extractor is known for it)."""
    pre = prekey(identity, weights, seed)
    if requested == "keras" or _litert_unavailable(hw):
        return pre, None
    found = remembered(pre)
    if found is None:
        return pre, None
    try:
        return pre, Speculation(found[0], found[1], jobs, size, method)
    except UserError:   # an unreadable cached file: convert again later
        return pre, None


# ------------------------------------------------------------------------- chunked extraction
def chunk_size(n: int) -> int:
    """Images per chunk for a split of ``n``: about CHUNKS_PER_SPLIT chunks, 16 to 256 images
    each. The last chunk runs while the other threads have nothing left to do, so it must be
    short: at a fixed 256, flowers5's 406 validation images were one chunk of 256 beside one of
    150, and one core sat idle for a fifth of that split. It depends on ``n`` alone, so a resumed
    run cuts the split where the killed one did."""
    return max(MIN_CHUNK, min(CHUNK, -(-n // CHUNKS_PER_SPLIT)))


def write_features(dest: Path, paths: list[str], width: int, compute: Callable[[list[str]], np.ndarray],
                   workers: int = 1, label: str = "features", chunk: int | None = None) -> np.ndarray:
    """``compute(paths) -> float32 (len, width)`` over ``paths`` in chunks, into ``dest`` (.npy);
    returns the finished file memory-mapped read-only. One split of ``write_splits``."""
    return write_splits([(dest, paths, label)], width, compute, workers, chunk)[0]


def write_splits(jobs: list[tuple[Path, list[str], str]], width: int,
                 compute: Callable[[list[str]], np.ndarray], workers: int = 1,
                 chunk: int | None = None) -> list[np.ndarray]:
    """Features of several splits (``jobs``: (dest .npy, paths, label)), their chunks queued in
    order on one pool of ``workers`` threads, so the next split's chunks fill the cores while the
    last chunks of the one before finish (no core waits at a split's end). Each chunk is written
    at its place in its file as it is done and each file renamed into place when all its chunks
    are in; returns the finished files memory-mapped read-only. Chunks go to the file by plain
    positioned writes, not through a memory map, so a large split never becomes resident in this
    process. Which chunks are written is recorded (after an fsync) every few seconds, so a killed
    extraction resumes where it stopped."""
    out: list = [None] * len(jobs)
    files: list[tuple[int, _SplitFile]] = []
    try:
        for i, (dest, paths, label) in enumerate(jobs):
            dest = Path(dest)
            if dest.exists():
                out[i] = np.load(dest, mmap_mode="r")
            elif not paths:
                out[i] = np.zeros((0, width), np.float32)
            else:
                files.append((i, _SplitFile(dest, paths, width, label, chunk)))

        def one(f: _SplitFile, s: int):
            f.begin()
            if f.write(s, compute(f.paths[s:s + f.chunk])):
                f.finish()

        for _, f in files:
            if not f.todo:          # resumed after its last chunk was written
                f.finish()
        tasks = [(f, s) for _, f in files for s in f.todo]
        if workers > 1 and len(tasks) > 1:
            with ThreadPoolExecutor(workers) as pool:
                try:
                    for fut in [pool.submit(one, *t) for t in tasks]:
                        fut.result()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        else:
            for t in tasks:
                one(*t)
    finally:
        for _, f in files:
            f.close()
    for i, f in files:
        out[i] = np.load(f.dest, mmap_mode="r")
    return out


class _SplitFile:
    """One split's feature file while it is written: the chunks left to do (a resumed run reads
    which are already in), positioned writes into ``.partial.npy``, the record of written chunks
    in ``.done.json``, and the rename into place once every chunk is in."""

    def __init__(self, dest: Path, paths: list[str], width: int, label: str, chunk: int | None = None):
        self.dest, self.paths, self.width, self.label = dest, paths, width, label
        self.n = n = len(paths)
        self.chunk = chunk or chunk_size(n)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.partial = dest.with_name(dest.stem + ".partial.npy")
        self.done_file = dest.with_name(dest.stem + ".done.json")
        starts = list(range(0, n, self.chunk))
        self.chunks = len(starts)
        self.done: set[int] = set()
        if self.partial.exists() and self.done_file.exists():
            try:
                if np.load(self.partial, mmap_mode="r").shape == (n, width):
                    self.done = set(json.loads(self.done_file.read_text())) & set(starts)
            except (ValueError, OSError):
                self.done = set()
        if not self.done:
            self.done_file.unlink(missing_ok=True)
            # only the header and the file's size (the map is dropped at once): rows are written later
            np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32, shape=(n, width))
        self.offset = int(np.load(self.partial, mmap_mode="r").offset)
        self.images_done = sum(min(self.chunk, n - s) for s in self.done)
        if self.done:
            log(f"{label}: resuming, {self.images_done}/{n} images already computed")
        self.todo = [s for s in starts if s not in self.done]
        self.lock = threading.Lock()
        self.fd: int | None = os.open(self.partial, os.O_RDWR)
        self.t0: float | None = None
        self.progress: Progress | None = None
        self._marked = time.time()

    def begin(self) -> None:
        """Its first chunk starts: the clock and the progress line start here, not when queued."""
        with self.lock:
            if self.t0 is None:
                self.t0 = time.time()
                self.progress = Progress(self.label, self.n, done=self.images_done, unit="img")

    def write(self, s: int, block: np.ndarray) -> bool:
        """Write the chunk at ``s``; True when it was the last one missing."""
        block = np.ascontiguousarray(block, np.float32)
        if block.shape != (min(self.chunk, self.n - s), self.width):
            raise RuntimeError(f"{self.label}: a chunk came back with shape {block.shape}")
        os.pwrite(self.fd, block.tobytes(), self.offset + s * self.width * 4)
        with self.lock:
            self.done.add(s)
            self.progress.add(len(block))
            if time.time() - self._marked > 5:
                self._mark()
            return len(self.done) == self.chunks

    def _mark(self) -> None:
        os.fsync(self.fd)
        write_json(self.done_file, sorted(self.done))
        self._marked = time.time()

    def close(self, record: bool = True) -> None:
        """Record what is written (``record``) and close the file (again: nothing)."""
        with self.lock:
            if self.fd is None:
                return
            if self.done and record:
                self._mark()
            elif self.done:   # complete: on disk before finish renames it into place
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def finish(self) -> None:
        self.close(record=False)   # complete: renamed into place, no record needed
        os.replace(self.partial, self.dest)
        self.done_file.unlink(missing_ok=True)
        if self.progress is not None:
            self.progress.finish()
        secs = time.time() - (self.t0 or time.time())
        log(f"{self.label}: {self.n} images in {secs:.1f}s ({(self.n - self.images_done) / max(secs, 1e-9):.0f} img/s)")


def litert_compute(extractor: LiteRTExtractor, size: int, method: str) -> Callable[[list[str]], np.ndarray]:
    """A chunk function that decodes and runs its images on the calling thread."""
    def compute(paths: list[str]) -> np.ndarray:
        x = np.empty((len(paths), size, size, 3), np.uint8)
        for k, p in enumerate(paths):
            x[k] = load_image(p, size, method)
        return extractor(x)
    return compute


def keras_compute(model, size: int, method: str, batch_size: int, hw=None) -> Callable[[list[str]], np.ndarray]:
    from .data.pipeline import predict_images

    return lambda paths: predict_images(model, paths, size, batch_size, method, hw)
