"""Verification of written artifacts: each file's tensor types, its accuracy and agreement with
the Keras model on the held-out test split through the device's own Classifier, its delegation,
its verdict, and which artifact a device loads by default."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.classifier import Classifier
from edge_runtime.errors import UserError
from edge_runtime.interpreter import graph_report
from edge_runtime.log import log as _log
from edge_runtime.manifest import sha256_file
from trainer.metrics import class_averaged_accuracy

from .gate import judge
from .gate import summary as gate_summary
from .precision import INT8, PRECISIONS, REGISTRY

if TYPE_CHECKING:
    from .convert import Reference


def check_tensor_types(interpreter, precision: str, io: str, path: Path) -> None:
    """Refuse an artifact whose tensors are not what its precision promises (e.g. a float32
    model called int8 because calibration saw no data), before it is recorded."""
    kinds = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    i = np.dtype(interpreter.get_input_details()[0]["dtype"]).name
    if not REGISTRY[precision].valid(kinds, i, io):
        raise UserError(f"{path}: the converter produced {i} input and tensors of {sorted(kinds)}, which is not a "
                        f"valid {precision} artifact; not recorded (check --calibration-samples and the run)")


def default_precision(artifacts: list[dict], candidates: list[dict] | None = None) -> str | None:
    """The full-int8 file that passed verification (of int8 and int8-qat, the one ``candidates``
    show agreeing more with float on the validation split; a tie keeps int8), else the first that
    passed (fp32, fp16, dynamic order); None when none did: a rejected artifact is never what a
    device loads by default."""
    from edge_runtime.manifest import failed_verification

    ok = [a["precision"] for a in artifacts if not failed_verification(a)]
    val = {c["precision"]: c["val_agreement"] for c in candidates or []}
    full = sorted((p for p in INT8 if p in ok), key=lambda p: (-val.get(p, 0.0), INT8.index(p)))
    if full:
        return full[0]
    return next((p for p in PRECISIONS if p in ok), None)


def int8_candidates(stage: Path, artifacts: list[dict], x_val: np.ndarray, keras_val: np.ndarray, labels: list[str],
                    threads) -> list[dict]:
    """Each full-int8 file's agreement with the float model (``keras_val``: its top-1 on ``x_val``)
    on the validation split: what chooses the default between int8 and int8-qat; beside it, its
    verification on the test split."""
    full = [a for a in artifacts if a["precision"] in INT8]
    if len(full) < 2 or not len(x_val):
        return []
    out = []
    for a in full:
        pred = Classifier(stage / a["file"], threads=threads, labels=labels).top1(x_val)
        v = a["verification"]
        out.append({"precision": a["precision"], "val_agreement": float((pred == keras_val).mean()),
                    "val_n": int(len(pred)), "test_accuracy": v["accuracy"], "drop_points": v["drop_points"],
                    "test_agreement": v["agreement"]})
    return out


# what an int8 model keeps outside XNNPACK on purpose: its probabilities (SOFTMAX in float) and the
# conversions around them; they cost microseconds, the convolutions all run delegated
_BY_DESIGN = {"QUANTIZE", "DEQUANTIZE", "SOFTMAX"}


def delegation_text(rep: dict) -> str:
    """Which ops XNNPACK runs, for the summary line, and why the rest does not matter (when so)."""
    if rep["fully_delegated"]:
        return "XNNPACK runs every op"
    rest = ", ".join(rep["not_delegated"]) or "?"
    why = (" (the step into the float probabilities at the end, by design; microseconds)"
           if set(rep["not_delegated"]) <= _BY_DESIGN else "")
    return f"XNNPACK runs all but {rest}{why}"


def verify(path: Path, prec: str, io: str, ref: Reference, labels: list[str], method: str, threads, *, secs: float,
           choice, max_drop: float = 1.0) -> dict:
    """The manifest entry of one written artifact: checked tensor types, test-split accuracy and
    agreement with Keras through the device's own Classifier, draft decoding, delegation."""
    clf = Classifier(path, threads=threads, labels=labels)
    check_tensor_types(clf.interpreter, prec, io, path)   # else the whole stage is dropped
    clf.resize_method, clf.probabilities = method, True
    y, n = ref.test_y, len(ref.test_y)
    pred = clf.top1(ref.x_test, label=f"verifying {prec}")
    acc = float((pred == y).mean()) if n else 0.0
    pred_d = pred.copy()
    if len(ref.draft_changed):
        pred_d[ref.draft_changed] = clf.top1(ref.x_draft_changed)
    acc_d = float((pred_d == y).mean()) if n else 0.0
    if ref.val_keras_pred is not None:   # a small test split: the gate judges test + validation pairs
        val_pred = clf.top1(ref.x_val, label=f"verifying {prec} (validation)")
        gate = judge(np.concatenate([y, ref.val_y]), np.concatenate([ref.keras_pred, ref.val_keras_pred]),
                     np.concatenate([pred, val_pred]), max_drop, "test+val")
    else:
        gate = judge(y, ref.keras_pred, pred, max_drop, "test")
    rep = graph_report(clf.interpreter)
    i = clf.interpreter.get_input_details()[0]
    o = clf.interpreter.get_output_details()[0]
    ver = {"split": "test", "n": int(n), "accuracy": acc, "keras_accuracy": ref.keras_acc,
           "class_avg_accuracy": class_averaged_accuracy(y, pred),
           "drop_points": round(100 * (ref.keras_acc - acc), 3),
           "agreement": float((pred == ref.keras_pred).mean()) if n else 1.0,
           "conversion_s": round(secs, 2), "gate": gate,
           "jpeg_draft": {"accuracy": acc_d, "agreement_with_full_decode": float((pred_d == pred).mean()) if n else 1.0,
                          "changed_images": int(len(ref.draft_changed))},
           **rep}
    _log(f"{prec:8s} {path.stat().st_size / 1e6:6.2f} MB  accuracy {acc:.4f} (Keras {ref.keras_acc:.4f}, "
         f"agreement {ver['agreement']:.4f})  {delegation_text(rep)}  {secs:.1f}s\n         {gate_summary(gate)}")
    return {
        "file": path.name, "precision": prec, "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "input": {"dtype": np.dtype(i["dtype"]).name, "scale": float(i["quantization"][0]),
                  "zero_point": int(i["quantization"][1]), "shape": [int(s) for s in i["shape"]]},
        "output": {"dtype": np.dtype(o["dtype"]).name, "scale": float(o["quantization"][0]),
                   "zero_point": int(o["quantization"][1]), "probabilities": True},
        "metadata": {"tflite_metadata": True, "embedded_files": ["labels.txt", "edgetl.json"]},
        "verification": ver,
        **({"quantization": choice.to_dict()} if choice else {})}


def mark_failures(artifacts: list[dict], max_drop: float) -> list[dict]:
    """Record each artifact's verdict from its paired-prediction gate (converter.gate; the device
    refuses a failed one as its default); returns the failed ones."""
    failed = [a for a in artifacts if a["verification"]["gate"]["verdict"] == "failed"]
    for a in artifacts:
        a["verification"]["status"] = "failed" if a in failed else "passed"
        if a in failed:
            a["verification"]["failure"] = gate_summary(a["verification"]["gate"])
    return failed


