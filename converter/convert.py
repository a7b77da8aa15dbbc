"""`edgetl convert`: export once with a fixed batch-1 signature, convert each precision, verify
every artifact on the run's held-out test split with the device's own code, write the manifest.

Precisions: fp32; fp16 (float16 weights); dynamic (int8 weights, float activations); int8
(full-integer, builtin int8 ops only, integer input/output, calibrated on training images).
Files are written under a temporary name and renamed, so an interrupted convert never leaves a
half-written model. What folder may be written and what of it replaced: converter.deploy_folder.
"""
from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.atomic import replacing_dir, write_bytes
from edge_runtime.errors import UserError
from edge_runtime.log import log as _log
from edge_runtime.manifest import FORMAT, NAME, sha256_file
from edge_runtime.quiet import native_stderr
from trainer.export import export_saved_model
from trainer.runs import rundir as R

from .config import DEFAULT_PRECISIONS, ConvertConfig
from .deploy_folder import deploy_target
from .gate import SMALL_SPLIT
from .gate import summary as gate_summary
from .precision import FILES as PRECISION_FILES
from .precision import INT8, PRECISIONS, REGISTRY
from .verify import check_tensor_types, default_precision, int8_candidates, mark_failures, verify  # noqa: F401


def _converter(saved_model: Path, precision: str, io: str, calib):
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: devices cannot run them
    REGISTRY[precision].setup(c, io, calib)
    return c


def tflite_bytes(model, precision: str = "fp32", io: str = "uint8", calib=None) -> bytes:
    """One Keras model -> one .tflite flatbuffer (no verification; ``convert`` does the full job)."""
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm")
        return _converter(Path(tmp) / "sm", precision, io, calib).convert()


def _atomic_write(path: Path, data: bytes):
    write_bytes(path, data, durable=True)


class _Interrupted:
    """Ctrl-C seen while the converter ran: TensorFlow calls back into Python for calibration
    data and can swallow the KeyboardInterrupt raised there, finishing the conversion anyway."""
    seen = False

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts():
    flag = _Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigint(signum, frame):
        flag.seen = True
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def carry_over(out: Path, stage: Path, previous: dict | None, same_run: bool, fingerprint: str,
               replaced: set[str]) -> list[dict]:
    """What the new deploy folder keeps from the one it replaces: artifacts of other precisions
    converted earlier from the same model (same run, same weights fingerprint, file intact) and
    that model's device benchmark. Another model's artifacts are never mixed in."""
    import shutil

    if not previous or not same_run or previous.get("model_fingerprint") != fingerprint:
        return []
    arts = previous.get("artifacts") if isinstance(previous.get("artifacts"), list) else []
    kept = [a for a in arts
            if isinstance(a, dict) and a.get("precision") not in replaced and a.get("file") in PRECISION_FILES
            and a.get("model_fingerprint") == fingerprint
            and (out / a["file"]).is_file() and sha256_file(out / a["file"]) == a.get("sha256")]
    for name in [a["file"] for a in kept] + (["benchmark.json"] if kept and (out / "benchmark.json").is_file() else []):
        shutil.copy2(out / name, stage / name)
    return kept


def _track(tracker, run: Path, out: Path, manifest: dict, artifacts: list[dict], ok: bool, settings: dict):
    """A nested MLflow run under the training's: settings, each artifact's verification numbers,
    and the artifacts themselves with labels and manifest (what a device would be given)."""
    if not tracker.on:
        return
    tracker.start(run, "convert", parent_of=run, tags={"edgetl.deploy": str(Path(out).resolve())})
    tracker.params(settings)
    values = {}
    for a in artifacts:
        v, p = a["verification"], a["precision"]
        values.update({f"{p}/accuracy": v["accuracy"], f"{p}/drop_points": v["drop_points"],
                       f"{p}/agreement": v["agreement"], f"{p}/bytes": a["bytes"],
                       f"{p}/fully_delegated": float(v["fully_delegated"])})
    tracker.metrics(values)
    for a in manifest["artifacts"]:
        tracker.artifact(out / a["file"], "deploy")
    tracker.artifact(out / NAME, "deploy")
    tracker.artifact(out / "labels.txt", "deploy")
    tracker.end(ok)


@dataclass
class Reference:
    """What every artifact is verified against, held once: the test split's pixels as the device
    sees them, the Keras model's predictions on them, and the validation split for int8 recovery.
    JPEG draft decoding is checked on the photos it changes only (often none)."""
    test_y: np.ndarray
    x_test: np.ndarray
    keras_pred: np.ndarray
    keras_acc: float
    draft_changed: np.ndarray          # indices of test photos that draft decoding changes
    x_draft_changed: np.ndarray        # their draft-decoded pixels
    x_val: np.ndarray | None
    val_y: np.ndarray
    val_ref: np.ndarray                # top-1 on x_val of the held-out twin when there is one
    val_keras_pred: np.ndarray | None = None   # top-1 on x_val of the shipped model (the gate's extra pairs)


def _predict(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Top-1 of the Keras model, converting one batch at a time to float (no float copy of x)."""
    out = [model.predict_on_batch(x[i:i + batch].astype(np.float32)).argmax(1) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def heldout_head(run: Path, model) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's train-only head (W, b) when its shipped head was refit on train+val, else None.
    A file that does not fit the model stops the conversion: recovery would measure on a
    different network."""
    from trainer.model import logits_layer

    path, layer = run / R.HELDOUT_HEAD, logits_layer(model)
    if not path.exists() or layer is None:
        return None
    fix = f"delete it (int8 recovery then measures on the shipped model) or train again (edgetl train DATA --out {run})"
    try:
        with np.load(path) as z:
            W, b = np.asarray(z["W"], np.float32), np.asarray(z["b"], np.float32)
    except Exception as e:  # noqa: BLE001 - any damage reads the same to the user
        raise UserError(f"{path}: damaged ({str(e).splitlines()[0][:80]}); {fix}") from None
    shapes = [tuple(w.shape) for w in layer.get_weights()]
    if [W.shape, b.shape] != shapes:
        raise UserError(f"{path}: a head of shape {W.shape} for a model whose head is {shapes[0]}; {fix}")
    return W, b


@contextlib.contextmanager
def head_weights(model, head: tuple[np.ndarray, np.ndarray] | None):
    """``model`` with its head set to ``head`` (W, b) inside the block, as it was after it."""
    if head is None:
        yield model
        return
    from trainer.model import logits_layer

    layer = logits_layer(model)
    kept = layer.get_weights()
    layer.set_weights(list(head))
    try:
        yield model
    finally:
        layer.set_weights(kept)


def reference(model, split, size: int, method: str, need_val: bool, heldout=None) -> Reference:
    """``heldout``: the train-only head; int8 recovery's validation reference is then its model."""
    from trainer.data.pipeline import load_arrays

    test_paths, test_y = split.paths_labels("test")
    x_test = load_arrays(test_paths, size, method)
    x_draft = load_arrays(test_paths, size, method, draft=True)  # what JPEG draft decoding gives the device
    changed = np.flatnonzero((x_draft != x_test).any(axis=(1, 2, 3))) if len(x_test) else np.zeros(0, np.int64)
    x_draft = x_draft[changed]
    keras_pred = _predict(model, x_test)
    # int8 recovery chooses on the validation split only (never on the test split it is verified on)
    val_paths, val_y = split.paths_labels("val")
    small = len(test_y) < SMALL_SPLIT and len(val_y) > 0   # the gate then judges validation photos too
    x_val = load_arrays(val_paths, size, method) if need_val or small else None
    with head_weights(model, heldout):
        val_ref = _predict(model, x_val) if x_val is not None else np.zeros(0, np.int64)
    return Reference(test_y=test_y, x_test=x_test, keras_pred=keras_pred,
                     keras_acc=float((keras_pred == test_y).mean()) if len(test_y) else 0.0,
                     draft_changed=changed, x_draft_changed=x_draft, x_val=x_val, val_y=val_y, val_ref=val_ref,
                     val_keras_pred=_predict(model, x_val) if small else None)


def _artifact_bytes(src: Path, prec: str, io: str, calib, ref: Reference, labels: list[str], threads,
                    *, int8_recovery: bool, verbose: bool, run: Path, twin: Path | None = None,
                    x_calib: np.ndarray | None = None):
    """One precision's .tflite flatbuffer (int8: with recovery) and what recovery chose.
    ``twin``: the SavedModel of the held-out twin, which int8 recovery measures on;
    ``x_calib``: the calibration images as arrays (the head refit fits on them)."""
    from .int8 import CANDIDATES, quantize_with_recovery

    held: list[str] = []
    try:
        with native_stderr(replay=False, held_on_error=held):   # the MLIR converter logs dozens of lines on fd 2
            conv = _converter(src, prec, io, calib)
            if prec != "int8":
                return conv.convert(), None
            kw = dict(threads=threads, candidates=CANDIDATES if int8_recovery else 0, x_fit=x_calib,
                      log=_log, detail=_log if verbose else lambda m: None)
            if twin is not None:
                return quantize_with_recovery(_converter(twin, prec, io, calib), io, ref.x_val, ref.val_y,
                                              ref.val_ref, labels, ship_converter=conv, **kw)
            return quantize_with_recovery(conv, io, ref.x_val, ref.val_y, ref.val_ref, labels, **kw)
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        raise conversion_failure(run, prec, str(e), "".join(held)) from None


def _qat_bytes(job: _Job, cfg: ConvertConfig):
    """int8-qat: the quantization-aware fine-tune on the run's train split (converter.qat)."""
    from trainer.data.pipeline import load_arrays

    from .qat import QatSettings, quantization_aware

    paths, _ = job.split.paths_labels("train")
    x_train = load_arrays(paths, job.size, job.method)
    settings = QatSettings(epochs=cfg.qat_epochs, learning_rate=cfg.qat_lr)
    held: list[str] = []
    try:
        with native_stderr(replay=False, held_on_error=held):
            return quantization_aware(job.model, x_train, job.ref.x_val, job.x_calib, cfg.io, settings,
                                      x_test=job.ref.x_test, y_test=job.ref.test_y, log=_log)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
        raise conversion_failure(job.run, "int8-qat", str(e), "".join(held)) from None


def conversion_failure(run: Path, prec: str, error: str, native_log: str) -> UserError:
    """One line naming the op and layer the converter rejected; the full text in RUN/deploy.log."""
    from .failure import summarize, write_log

    text = f"{error}\n{native_log}"
    try:
        where = f"full converter output in {write_log(run, f'{prec} conversion failed', text)}"
    except OSError:
        where = "run with --verbose for the full converter output"
    return UserError(f"{run}: {prec} conversion failed: {summarize(text)}; {where}")


def build_manifest(run: Path, cfg, labels: list[str], size: int, method: str, io: str, max_drop: float,
                   *, calibration: dict, artifacts: list[dict]) -> dict:
    return {
        "format": FORMAT,
        "labels": labels, "labels_file": "labels.txt",
        "input": {"size": size, "color": "RGB", "range": [0, 255], "layout": "NHWC", "resize": method,
                  # draft JPEG decoding is allowed on the device only when it costs no accuracy here
                  "jpeg_draft": all(abs(a["verification"]["jpeg_draft"]["accuracy"] - a["verification"]["accuracy"])
                                    <= max_drop / 100 for a in artifacts)},
        "backbone": cfg.backbone,
        # how the run trained; every artifact is built from its float32 network whatever this says
        "training": {"precision": cfg.precision_policy},
        "source_run": str(run.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "calibration": calibration,
        "io": io,
        "artifacts": artifacts,
    }


@dataclass
class _Job:
    """One conversion's inputs, read and checked before anything is written."""
    run: Path
    out: Path
    target: object           # deploy_folder.DeployTarget
    config: object           # trainer.runs.run.RunConfig
    labels: list[str]
    model: object
    size: int
    method: str
    fingerprint: str
    calib_paths: list[str]
    per_class: dict
    heldout: tuple | None
    x_calib: np.ndarray | None
    ref: Reference
    split: object = None     # trainer.data.split.Split (QAT reads the train split)


def convert(run: Path, precisions=DEFAULT_PRECISIONS, **settings) -> dict:
    """Returns the manifest dict; raises UserError when an artifact fails its verification gate.
    ``settings``: the fields of ConvertConfig (its defaults are the CLI's). ``track``: MLflow URI
    (default $MLFLOW_TRACKING_URI) for a run nested under the training's."""
    from trainer.runs.tracking import Tracker

    cfg = ConvertConfig(precisions=tuple(precisions), **settings)
    tracker = Tracker(cfg.track, explicit=cfg.track is not None)
    job = _prepare(Path(run), cfg)
    # the whole folder is built beside `out` and switched in as a unit: a reader (or a killed run)
    # sees the old deploy folder or the new one, never a mix of two conversions
    with replacing_dir(job.out) as stage, _interrupts() as interrupted:
        artifacts = _artifacts(job, cfg, stage, interrupted)
        manifest, failed = _manifest(job, cfg, stage, artifacts)
        interrupted.check()
    _track(tracker, job.run, job.out, manifest, artifacts, ok=not failed, settings={
        "precisions": ",".join(cfg.precisions), "io": cfg.io, "calibration_samples": cfg.calibration_samples,
        "max_drop": cfg.max_drop, "int8_recovery": cfg.int8_recovery, "out": str(job.out)})
    for a in failed:
        raise _gate_failure(job.out, a, manifest, failed, cfg.max_drop)
    return manifest


def _prepare(run: Path, cfg: ConvertConfig) -> _Job:
    from trainer.data.pipeline import load_arrays
    from trainer.data.sampling import stratified_sample
    from trainer.data.split import Split
    from trainer.evaluate import load_run_model
    from trainer.model import weights_fingerprint
    from trainer.runs.run import read_config

    out = Path(cfg.out) if cfg.out else run / R.DEPLOY
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    target = deploy_target(out, run, R.DEPLOY, cfg.force)   # before any work: what may be replaced
    config, labels = read_config(run), R.read_labels(run)
    model = load_run_model(run)
    size, n_out = int(model.inputs[0].shape[1]), int(model.outputs[0].shape[-1])
    if len(labels) != n_out:
        raise UserError(f"{run / R.LABELS}: {len(labels)} class name(s) for a model with {n_out} outputs; "
                        "restore labels.txt from the training run (one class per line, in output order)")
    method = R.read_resize(run)
    split = Split.of_run(run, cfg.data_root)
    calib_paths, per_class = stratified_sample(*split.paths_labels("train"), cfg.calibration_samples)
    int8 = any(p in INT8 for p in cfg.precisions)
    heldout = heldout_head(run, model) if "int8" in cfg.precisions else None
    return _Job(run=run, out=out, target=target, config=config, labels=labels, model=model, size=size,
                method=method, fingerprint=weights_fingerprint(model), calib_paths=calib_paths,
                per_class=per_class, heldout=heldout,
                x_calib=load_arrays(calib_paths, size, method) if int8 else None,
                ref=reference(model, split, size, method, need_val=int8, heldout=heldout), split=split)


def _artifacts(job: _Job, cfg: ConvertConfig, stage: Path, interrupted) -> list[dict]:
    """Each precision's artifact, written into ``stage`` and verified there."""
    from .calibration import representative_dataset
    from .metadata import populate

    artifacts = []
    with tempfile.TemporaryDirectory() as tmp:
        # every artifact ends in probabilities: int8 keeps its SOFTMAX in float (see converter.int8)
        src = Path(tmp) / "saved_model"
        export_saved_model(job.model, src)
        twin = None
        if job.heldout is not None:   # int8 recovery measures on it (see converter.int8)
            twin = Path(tmp) / "saved_model_heldout"
            with head_weights(job.model, job.heldout):
                export_saved_model(job.model, twin)
        for prec in cfg.precisions:
            interrupted.check()
            t0 = time.time()
            calib = representative_dataset(job.x_calib) if prec == "int8" else None
            if prec == "int8-qat":
                blob, choice = _qat_bytes(job, cfg)
            else:
                blob, choice = _artifact_bytes(src, prec, cfg.io, calib, job.ref, job.labels, cfg.threads,
                                               int8_recovery=cfg.int8_recovery, verbose=cfg.verbose, run=job.run,
                                               twin=twin, x_calib=job.x_calib)
            blob = populate(blob, job.labels, job.size, cfg.io if prec in INT8 and cfg.io != "float" else "float32",
                            probabilities=True, resize=job.method, name=f"edgetl {job.config.backbone_name} {prec}",
                            description=f"image classifier over {len(job.labels)} classes, trained by edgetl")
            path = stage / REGISTRY[prec].file
            _atomic_write(path, blob)
            a = verify(path, prec, cfg.io, job.ref, job.labels, job.method, cfg.threads, secs=time.time() - t0,
                       choice=choice, max_drop=cfg.max_drop)
            artifacts.append({**a, "model_fingerprint": job.fingerprint})
            if prec == "int8-qat" and choice.keras_test_accuracy is not None:
                _log(f"         the fake-quant Keras network scored {choice.keras_test_accuracy:.4f} on the same "
                     f"photos (the file: {a['verification']['accuracy']:.4f})")
    return artifacts


def _manifest(job: _Job, cfg: ConvertConfig, stage: Path, artifacts: list[dict]) -> tuple[dict, list[dict]]:
    """labels.txt and manifest.json in ``stage``, with the artifacts kept from the folder replaced."""
    R.write_text(stage / R.LABELS, "\n".join(job.labels) + "\n")
    calibration = {"source": "train split", "samples": len(job.calib_paths), "requested": cfg.calibration_samples,
                   "per_class": {job.labels[c]: n for c, n in job.per_class.items()}, "random_noise": False}
    manifest = build_manifest(job.run, job.config, job.labels, job.size, job.method, cfg.io, cfg.max_drop,
                              calibration=calibration, artifacts=artifacts)
    manifest["model_fingerprint"] = job.fingerprint
    kept = carry_over(job.out, stage, job.target.previous, job.target.same_run, job.fingerprint,
                      {a["precision"] for a in artifacts})
    manifest["artifacts"] = sorted(kept + artifacts, key=lambda a: PRECISIONS.index(a["precision"]))
    failed = mark_failures(artifacts, cfg.max_drop)
    x_val = job.ref.x_val if job.ref.x_val is not None else np.zeros((0, job.size, job.size, 3), np.uint8)
    keras_val = job.ref.val_keras_pred if job.ref.val_keras_pred is not None else _predict(job.model, x_val)
    candidates = int8_candidates(stage, artifacts, x_val, keras_val, job.labels, cfg.threads)
    if candidates:
        manifest["int8_candidates"] = candidates
    manifest["default"] = default_precision(manifest["artifacts"], candidates)
    R.write_json(stage / NAME, manifest)
    return manifest, failed


def _gate_failure(out: Path, a: dict, manifest: dict, failed: list[dict], max_drop: float) -> UserError:
    g = a["verification"]["gate"]
    others = [x["precision"] for x in manifest["artifacts"] if x not in failed]
    return UserError(f"{out / a['file']}: {a['precision']} loses to float: {gate_summary(g)}; it is kept but "
                     f"not the default. Ways on: a larger budget (--max-drop {max(max_drop * 2, g['drop_points']):.1f}), "
                     f"int8 recovery if it was off (drop --no-int8-recovery), more calibration photos "
                     f"(--calibration-samples), or ship {others[0] if others else 'the fp32 artifact (--fp32)'}")
