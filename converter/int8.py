"""Full-integer int8 with accuracy recovery, every choice measured on the validation split.

Post-training int8 of a MobileNet-class body loses a little everywhere: each layer's rounding
error is small, but a classifier with a handful of classes flips the images whose top two scores
are close. The converter therefore
1. calibrates once on training images (the representative dataset),
2. measures how often the plain int8 model agrees with the float model on the validation split
   (when the shipped head was refit on train+val, on its held-out twin: the same network with
   the head fit on train only, so the validation images are new to it; see ``quantize_with_recovery``),
3. ranks layers by their own quantization error (TFLite's QuantizationDebugger: RMSE of each
   layer's int8 output against its float output, in units of the layer's quantization step), and
4. re-fits the head to the features the int8 body produces on the calibration images, and keeps
   that when it brings the int8 model's probabilities closer to the float model's on the
   validation split (``converter.head_refit``); the graph and its latency do not change, and
5. only when agreement is still below the target, tries the worst layers in float one at a time
   (worst first; a kept head refit is fit again to each) and keeps each one that raises
   validation agreement, until the target is met. Float and int8 convolutions both run inside
   the XNNPACK delegate, so the model stays fully delegated; the cost is measured and recorded.
The test split is never read here: it stays the honest verification of whatever is chosen.
"""
from __future__ import annotations

import csv
import io
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from .head_refit import find_head, read_tensors, refit_head, softmax_kl, write_head

TARGET_AGREEMENT = 0.99
CANDIDATES = 8           # worst layers tried in float, one at a time
DEBUG_IMAGES = 100       # validation images the per-layer analysis runs on
REPORT_LAYERS = 10       # worst layers listed in the manifest


@dataclass
class Int8Choice:
    """What recovery measured and chose; stored in the int8 artifact's manifest entry."""
    target_agreement: float
    val_n: int
    plain: dict                         # val agreement/accuracy of plain full-int8
    chosen: dict                        # the same for what was kept
    float_layers: list[str] = field(default_factory=list)
    worst_layers: list[dict] = field(default_factory=list)
    tried: list[dict] = field(default_factory=list)
    latency_ms: dict = field(default_factory=dict)
    seconds: float = 0.0
    # what the validation agreement was measured on: "shipped model", or "held-out twin" (the
    # same network with its head fit on train only, for a head refit on train+val)
    measured_on: str = "shipped model"
    # step 4: {"kept", "l2", "fit_images", "before": {agreement, accuracy, kl}, "grid": [...]}
    head_refit: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _io_dtype(io: str):
    import tensorflow as tf
    return {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}[io]


def _quantize(calibrated: bytes, io: str, float_nodes: list[str]) -> bytes:
    """Calibrated model -> full-integer model, with ``float_nodes`` (tensor names) left float.
    This is the step TFLiteConverter runs after calibration, called directly so one calibration
    serves every variant."""
    from tensorflow.lite.python import convert as tfl_convert
    from tensorflow.lite.python import util

    # SOFTMAX stays float (XNNPACK has no int8 SOFTMAX): the int8 body ends in a DEQUANTIZE and
    # the model outputs float probabilities, which is what MediaPipe / Task Library clients expect
    blob = tfl_convert.mlir_quantize(calibrated, fully_quantize=False, denylisted_ops=["SOFTMAX"],
                                     denylisted_nodes=list(float_nodes) or None)
    # the converter's own last step: an integer input replaces the float input's QUANTIZE
    import tensorflow as tf
    return util.modify_model_io_type(blob, _io_dtype(io), tf.float32) if io != "float" else blob


class _Candidates:
    """Candidate models as files in a scratch folder, each run through the device's own
    Classifier (same input quantization, same interpreter) and timed by the device benchmark."""

    def __init__(self, threads, labels):
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.threads, self.labels, self._n = threads, labels, 0

    def classifier(self, blob: bytes):
        from pathlib import Path

        from edge_runtime.classifier import Classifier

        self._n += 1
        path = Path(self._dir.name) / f"candidate_{self._n}.tflite"
        path.write_bytes(blob)
        return Classifier(path, threads=self.threads, labels=self.labels)

    def top1(self, blob: bytes, x: np.ndarray) -> np.ndarray:
        return self.classifier(blob).top1(x)

    def invoke_ms(self, blob: bytes) -> float:
        from edge_runtime.benchmark import time_artifact

        return time_artifact(self.classifier(blob), runs=30)["raw_ms"]["median"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._dir.cleanup()


def _score(pred, ref, y) -> dict:
    return {"agreement": float((pred == ref).mean()) if len(ref) else 1.0,
            "accuracy": float((pred == y).mean()) if len(y) else 0.0}


def calibrate(converter) -> bytes:
    """The calibrated (not yet quantized) model: the converter's float graph with the ranges its
    representative dataset produced, as ``_quantize`` takes it (what QuantizationDebugger does)."""
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True   # noqa: SLF001 - the step TFLite's debugger uses too
    return converter.convert()


def layer_errors(converter, x_debug: np.ndarray) -> tuple[bytes, list[dict]]:
    """Calibrate with ``converter`` and measure each layer's int8 error on ``x_debug``.
    Returns (calibrated model, layers sorted worst first)."""
    import tensorflow as tf

    def data():
        for img in x_debug:
            yield [img.astype(np.float32)[None]]

    rows = []
    with warnings.catch_warnings():   # the debugger runs tf.lite.Interpreter, which warns it is deprecated
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        dbg = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=data)
        if len(x_debug):
            dbg.run()
    if len(x_debug):
        buf = io.StringIO()
        dbg.layer_statistics_dump(buf)
        buf.seek(0)
        for r in csv.DictReader(buf):
            scale = float(r["scale"]) or 1.0
            rows.append({"tensor": r["tensor_name"], "op": r["op_name"],
                         "rmse_over_scale": round(float(np.sqrt(float(r["mean_squared_error"]))) / scale, 4)})
        rows.sort(key=lambda r: -r["rmse_over_scale"])
    return dbg.calibrated_model, rows


def quantize_with_recovery(converter, io: str, x_val: np.ndarray, y_val: np.ndarray, ref_val: np.ndarray,
                           labels: list[str], target: float = TARGET_AGREEMENT, *, candidates: int = CANDIDATES,
                           threads=None, log=lambda m: None, detail=lambda m: None,
                           ship_converter=None, x_fit: np.ndarray | None = None) -> tuple[bytes, Int8Choice]:
    """``converter``: a TFLiteConverter set up for int8 (optimizations + representative dataset).
    ``x_val``/``y_val``: validation images and labels; ``ref_val``: the float model's top-1 on them;
    ``labels``: the class names (candidates are bare .tflite files).
    ``log`` gets the summary lines, ``detail`` the per-layer ones (--verbose).
    ``ship_converter``: the model to ship, when ``converter`` (and ``ref_val``) are its held-out
    twin. A head refit on train+val has trained on the validation images, and a model agrees with
    its int8 version more often on its own training images (their top two scores are further
    apart): flowers5 MobileNetV2 plain int8 agreed on 0.983 of them against 0.970 for the twin, so
    recovery chose as if two layers bought 0.993, and the shipped model agreed on 0.988 of the
    test split. So every choice is measured on the twin, whose head has not seen them, and
    the layers it keeps in float are then kept in the shipped model (same layers, same
    calibration images), and its head is re-fit with the strength the twin chose.
    ``x_fit``: the calibration images as arrays, for the head refit (None: no refit).
    Returns the chosen model and what was measured."""
    t0 = time.time()
    calibrated, worst = layer_errors(converter, x_val[:DEBUG_IMAGES])
    with _Candidates(threads, labels) as cands:
        plain = _quantize(calibrated, io, [])
        plain_score = _score(cands.top1(plain, x_val), ref_val, y_val)
        twin = " (head fit on train only: images it has not seen)" if ship_converter is not None else ""
        log(f"int8 recovery: plain int8 agrees with float on {plain_score['agreement']:.4f} of "
            f"{len(y_val)} validation images{twin} (target {target})")
        for r in worst[:REPORT_LAYERS]:
            detail(f"  layer error {r['rmse_over_scale']:7.3f} steps  {r['op']:<18} {r['tensor'][:90]}")

        def build(cal: bytes, nodes: list[str], l2: float | None) -> bytes:
            """int8 with ``nodes`` left float and, for ``l2``, the head re-fit to that model."""
            q = _quantize(cal, io, nodes)
            if l2 is None:
                return q
            head, fits = refit_head(cal, q, x_fit, threads, grid=(l2,))
            return _quantize(write_head(cal, head, *fits[l2]), io, nodes)

        blob, chosen, floats, tried, refit, l2 = plain, plain_score, [], [], {}, None
        if x_fit is not None and candidates:
            refit_blob, refit = _choose_refit(calibrated, plain, io, x_fit, x_val, y_val, ref_val, threads=threads,
                                              log=log, detail=detail)
            if refit["kept"]:
                blob, l2 = refit_blob, refit["l2"]
                chosen = {k: refit["chosen"][k] for k in ("agreement", "accuracy")}
        # Greedy, worst layer first: a layer stays float only if that raises validation agreement
        # (measured: keeping the k worst in float is not monotone, 8 can beat 16). A kept head
        # refit is fit again to each candidate (its int8 features differ).
        for r in worst[:candidates] if chosen["agreement"] < target else []:
            nodes = floats + [r["tensor"]]
            cand = build(calibrated, nodes, l2)
            s = _score(cands.top1(cand, x_val), ref_val, y_val)
            kept = s["agreement"] > chosen["agreement"]
            tried.append({"layer": r["tensor"], "kept": kept, **s})
            detail(f"  + {r['tensor'][:70]} in float: agreement {s['agreement']:.4f}"
                   f"{' (kept)' if kept else ''}")
            if kept:
                blob, chosen, floats = cand, s, nodes
                if s["agreement"] >= target:
                    break
        if floats:
            log(f"int8 recovery: {len(floats)} layer(s) kept in float -> validation agreement "
                f"{chosen['agreement']:.4f}")
        if chosen["agreement"] < target:
            log("int8 recovery: below the target; quantization-aware training may reach it (edgetl convert RUN --qat)")
        if ship_converter is not None:
            shipped = calibrate(ship_converter)
            plain = _quantize(shipped, io, [])
            blob = build(shipped, floats, l2) if floats or l2 is not None else plain
        latency = {"plain_int8": cands.invoke_ms(plain)}
        if floats:
            latency["chosen"] = cands.invoke_ms(blob)
    choice = Int8Choice(target_agreement=target, val_n=int(len(y_val)), plain=plain_score, chosen=chosen,
                        float_layers=floats, worst_layers=worst[:REPORT_LAYERS], tried=tried,
                        latency_ms=latency, seconds=round(time.time() - t0, 1),
                        measured_on="held-out twin" if ship_converter is not None else "shipped model",
                        head_refit={k: v for k, v in refit.items() if k != "chosen"})
    return blob, choice


def _choose_refit(calibrated: bytes, plain: bytes, io: str, x_fit, x_val, y_val, ref_val, *, threads, log, detail):
    """Step 4: the head re-fit at each strength of ``head_refit.GRID`` to ``plain`` (the int8
    model of ``calibrated``), each measured on the validation images; returns (best model,
    record) with record["kept"] when it beats ``plain`` on KL and does not lose agreement."""
    if not len(x_val):
        return None, {"kept": False, "reason": "no validation images to measure it on"}
    fits = refit_head(calibrated, plain, x_fit, threads)
    if fits is None:
        return None, {"kept": False, "reason": "the model does not end in one dense layer with a bias"}
    head, by_l2 = fits
    (z_float,) = read_tensors(calibrated, [head.logits], x_val, threads)

    def measure(blob):
        (z,) = read_tensors(blob, [find_head(blob).logits], x_val, threads)
        return {**_score(z.argmax(1), ref_val, y_val), "kl": round(softmax_kl(z_float, z), 6)}

    before = measure(plain)
    grid, blobs = [], {}
    for l2, (W, b) in by_l2.items():
        blobs[l2] = _quantize(write_head(calibrated, head, W, b), io, [])
        grid.append({"l2": l2, **measure(blobs[l2])})
        detail(f"  head refit l2 {l2:g}: validation agreement {grid[-1]['agreement']:.4f}, "
               f"KL {grid[-1]['kl']:.5f} (before {before['agreement']:.4f}, {before['kl']:.5f})")
    best = min(grid, key=lambda r: r["kl"])
    kept = best["kl"] < before["kl"] and best["agreement"] >= before["agreement"]
    log(f"int8 recovery: head refit on {len(x_fit)} calibration images "
        + (f"(l2 {best['l2']:g}) -> validation agreement {best['agreement']:.4f}, KL {before['kl']:.5f} -> "
           f"{best['kl']:.5f}" if kept else "not kept (no gain on the validation split)"))
    return (blobs[best["l2"]] if kept else None), {
        "kept": kept, "l2": best["l2"] if kept else None, "fit_images": int(len(x_fit)),
        "before": before, "chosen": best if kept else before, "grid": grid}
