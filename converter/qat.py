"""Quantization-aware training (QAT) in Keras 3: int8 closer to float where post-training
quantization (PTQ) falls short, with no tf-keras and no tensorflow-model-optimization.

The run's float model is rebuilt as one flat graph that computes what the int8 file will compute:
- every convolution and dense layer followed by batch norm has the norm folded into its kernel
  and bias (TFLite folds it the same way before it quantizes), and its kernel passes through a
  per-channel symmetric int8 fake-quant (scale = max|w| / 127, values -127..127: TFLite's rule,
  so the file's weights are exactly the ones trained);
- every tensor the int8 file stores (read from the converter's own float graph of this network,
  so fused conv + bias + ReLU6 chains, hard-swish, squeeze-excite multiplies, adds and concats are
  found as TFLite fuses them, for any backbone family) passes through a per-tensor int8
  fake-quant whose range is calibrated on training photos, then tracked (moving average) while
  the network fine-tunes; gradients pass straight through inside the range.
The fine-tune distils the float model (its logits on training photos blended by mixup are the
targets, so it learns to agree with float where flips happen, not to re-learn the labels), a few
epochs at a small learning rate, keeping the epoch whose validation agreement with float is
highest.

The int8 file is then built from the same network with those ranges written into the
converter's calibrated graph (a tensor the fake-quants do not reach keeps its calibrated range)
and quantized by the converter's own full-int8 step, so it has the post-training file's
operators, delegation and metadata.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class QatSettings:
    """What the fine-tune did; recorded in the manifest."""
    epochs: int = 2
    learning_rate: float = 1e-5
    batch_size: int = 32
    distill: str = "logits"      # or "probabilities" (see fine_tune)
    mixup: float = 0.4           # Beta(a, a) blends of two photos (0: none; see fine_tune)
    train_images: int = 0
    val_images: int = 0
    calibration_batches: int = 0
    fake_quant_tensors: int = 0
    folded_batch_norms: int = 0
    quantized_layers: int = 0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    fine_tune_seconds: float = 0.0
    keras_test_accuracy: float | None = None   # the fake-quant Keras network's, beside the file's
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- the graph
@dataclass
class QatModel:
    model: object                 # image -> probabilities, one flat graph
    weights: list                 # QuantizedWeights layers
    fake_quants: dict             # key (layer name) -> FakeQuant
    folded: int                   # batch norms folded
    ties: dict = field(default_factory=dict)   # key -> key whose range it shares (see ``place``)

    def set_mode(self, *, quantize: bool, calibrating: bool = False, tracking: bool = False) -> None:
        for w in self.weights:
            w.quantize = quantize
        for f in self.fake_quants.values():
            f.quantize, f.calibrating, f.tracking = quantize, calibrating, tracking

    def ranges(self) -> dict[str, tuple[float, float]]:
        """key -> nudged (min, max) of each active fake-quant, as the int8 file must use it."""
        out = {}
        for k, f in self.fake_quants.items():
            if f.active:
                lo, hi = (float(v) for v in f.range())
                s = (hi - lo) / 255.0
                zp = round(-lo / s)
                out[k] = (-zp * s, (255 - zp) * s)
        return out


def build_qat_model(model) -> QatModel:
    """``model`` (edgetl's: preprocessing, backbone, head, softmax; nested models allowed) as one
    flat graph of QuantizedWeights and FakeQuant layers around its own other layers."""
    import keras

    from .qat_layers import ConstantOp, FakeQuant, QuantizedWeights, Step
    weights, fqs, folded = [], {}, [0]
    produced_by = {}     # id(output tensor) -> QuantizedWeights that made it (for folding)

    def replay(fmodel, inputs):
        graph = getattr(fmodel, "_functional", None) or fmodel   # a Sequential's own functional graph
        return graph._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call)  # noqa: SLF001

    def call(op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return replay(op, args[0] if len(args) == 1 else list(args))
        if isinstance(op, keras.layers.Dropout):
            return args[0]
        if isinstance(op, keras.layers.BatchNormalization) and id(args[0]) in produced_by:
            conv = produced_by.pop(id(args[0]))
            conv.fold(op)
            folded[0] += 1
            return args[0]     # the conv's output now stands for conv + batch norm
        if type(op).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense") and _plain(op):
            layer = QuantizedWeights(op)
            weights.append(layer)
            out = layer(args[0])
            return wrap(out, layer.name, conv=layer)
        steps = _affine_steps(op)
        if steps:
            x = args[0]
            for kind, value in steps:
                layer = ConstantOp(f"{op.name}__{kind}", kind, value)
                x = wrap(layer(x), layer.name)
            return x
        kwargs.pop("training", None)
        if isinstance(op, keras.layers.Layer):
            op.trainable = False        # batch norms not after a conv stay in inference mode
            out = op(*args, **kwargs)
        else:
            step = Step(op, args, kwargs)
            out = step(*step.inputs_of(args))
        if isinstance(op, keras.layers.Softmax) or not hasattr(out, "shape") or isinstance(out, (list, tuple)):
            return out
        return wrap(out, op.name)

    def wrap(t, key, conv=None):
        if key in fqs:       # a layer called twice: its outputs are separate tensors
            key = f"{key}__{len(fqs)}"
        fq = FakeQuant(key)
        fqs[key] = fq
        out = fq(t)
        if conv is not None:
            produced_by[id(out)] = conv
        return out

    inp = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    out = replay(model, inp)
    qmodel = keras.Model(inp, out, name="qat")
    return QatModel(model=qmodel, weights=weights, fake_quants=fqs, folded=folded[0])


def _affine_steps(layer) -> list[tuple[str, np.ndarray]]:
    """A rescaling or normalization layer as its two int8 ops (TFLite keeps a MUL and an ADD, each
    with its own grid: a rescale to [0, 2] stored on a [-1, 2] grid loses half a pixel level);
    [] for any other layer."""
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32)
        return [("mul", scale)] + ([("add", offset)] if np.any(offset) else [])
    if isinstance(layer, keras.layers.Normalization) and not layer.invert:
        mean, var = np.asarray(layer.mean, np.float32), np.asarray(layer.variance, np.float32)
        return [("add", -mean), ("mul", 1.0 / np.maximum(np.sqrt(var), 1e-7))]
    return []


def _plain(layer) -> bool:
    cfg = layer.get_config()
    return cfg.get("groups", 1) == 1 and cfg.get("data_format", "channels_last") == "channels_last"


# --------------------------------------------------------------------------- placement
_SUFFIX = re.compile(r"_\d+$")


def tensor_layers(blob: bytes, names: set[str]) -> list[tuple[int, str]]:
    """(tensor index, layer name) for each op output of a TFLite graph that one of ``names``
    produced, in execution order. TFLite names a fused op's output after the op that ends the
    chain (``.../block_1_expand_relu_1/Relu6;...conv...``): the last path segment that is a layer
    name (Keras adds a ``_N`` call suffix) is the layer whose output the tensor is."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(blob))
    g = m.subgraphs[0]
    out = []
    for op in g.operators:
        for t in op.outputs:
            name = g.tensors[t].name
            name = name.decode() if isinstance(name, bytes) else name
            layer = _layer_of(name.split(";")[0], names)
            if layer:
                out.append((int(t), layer))
    return out


def _layer_of(path: str, names: set[str]) -> str | None:
    for seg in reversed(path.split("/")[:-1]):
        if seg in names:
            return seg
        base = _SUFFIX.sub("", seg)
        if base in names:
            return base
    return None


# TFLite int8 ops whose output must have its input's scale: CONCATENATION puts all its inputs on
# its output's grid; the single-input ones pass the input's grid through
_CONCAT = "CONCATENATION"
_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "PADV2", "TRANSPOSE",
                 "STRIDED_SLICE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "RESIZE_NEAREST_NEIGHBOR"}


def _op_names(m) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for op in m.subgraphs[0].operators:
        oc = m.operatorCodes[op.opcodeIndex]
        out.append(by_code.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?"))
    return out


def place(q: QatModel, float_blob: bytes) -> dict[str, str]:
    """Activate the fake-quants whose layer output the int8 file stores, as it stores it, and
    return the ties: key -> the key whose range that tensor must share (the inputs of a
    concatenation share its output's grid; a reshape's or pooling's output its input's)."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    names = set(q.fake_quants)
    key_of = {t: k for t, k in tensor_layers(float_blob, names)}
    m = fbu.convert_bytearray_to_object(bytearray(float_blob))
    ties = {}
    for op, name in zip(m.subgraphs[0].operators, _op_names(m)):
        out = key_of.get(int(op.outputs[0])) if len(op.outputs) else None
        if out is None:
            continue
        if name == _CONCAT:
            for t in op.inputs:
                if int(t) in key_of:
                    ties[key_of[int(t)]] = out
        elif name in _PASS_THROUGH and len(op.inputs) and int(op.inputs[0]) in key_of:
            ties[out] = key_of[int(op.inputs[0])]
    stored = set(key_of.values())
    for key, f in q.fake_quants.items():
        f.active = key in stored and key not in ties
    q.ties = ties
    return ties


def calibrated_graph(model, x_calib: np.ndarray) -> bytes:
    """The converter's float graph of ``model`` with calibrated ranges (not yet quantized): the
    same converter set-up and calibration step as post-training int8."""
    import tempfile
    from pathlib import Path

    from trainer.export import export_saved_model

    from .calibration import representative_dataset
    from .convert import _converter
    from .int8 import calibrate

    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(model, Path(tmp) / "sm")
        return calibrate(_converter(Path(tmp) / "sm", "int8", "uint8", representative_dataset(x_calib)))


def write_ranges(calibrated: bytes, where: dict[str, int], ranges: dict[str, tuple[float, float]]) -> bytes:
    """``calibrated`` with the learned ranges in place of the calibrated ones."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(calibrated))
    g = m.subgraphs[0]
    for key, (lo, hi) in ranges.items():
        if key in where:
            qp = g.tensors[where[key]].quantization
            qp.min, qp.max = [np.float32(lo)], [np.float32(hi)]
    return bytes(fbu.convert_object_to_bytearray(m))


def calibrate_ranges(q: QatModel, x: np.ndarray, batch: int = 32, batches: int = 8) -> int:
    """Initial ranges: the mean of the extremes of a few training batches."""
    q.set_mode(quantize=True, calibrating=True)
    n = 0
    for i in range(0, min(len(x), batch * batches), batch):
        q.model(x[i:i + batch].astype(np.float32), training=False)
        n += 1
    q.set_mode(quantize=True)
    return n


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean()) if len(p) else 0.0


def _predict(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [np.asarray(model(x[i:i + batch].astype(np.float32), training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)


def _logits(model, q: QatModel | None = None):
    """The network up to its logits (the input of the final softmax)."""
    import keras

    if q is not None:
        return keras.Model(model.inputs[0], q.fake_quants["logits"].output)
    soft = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Softmax))
    return keras.Model(model.inputs[0], soft.input)


def _centered_mse(y_true, y_pred):
    """Squared error between logits up to a per-image constant (softmax ignores it)."""
    from keras import ops

    y_pred = y_pred - ops.mean(y_pred, axis=-1, keepdims=True)
    y_true = y_true - ops.mean(y_true, axis=-1, keepdims=True)
    return ops.mean(ops.square(y_pred - y_true), axis=-1)


def fine_tune(q: QatModel, teacher, x_train: np.ndarray, x_val: np.ndarray, p_val: np.ndarray,
              settings: QatSettings, *, log=lambda m: None, seed: int = 0, on_epoch=None) -> QatSettings:
    """Distil ``teacher`` (the float model) into the fake-quant network on ``x_train`` (random
    horizontal flips), one pass per epoch; keep the epoch with the best validation agreement with
    the teacher's top-1 (ties: lower KL). ``p_val``: the teacher's probabilities on ``x_val``.
    ``settings.distill``: "logits" matches the teacher's logits (up to a constant), which keeps
    every class's margin, also on training photos where the float head is so sure that the KL of
    probabilities has nothing left to teach; "probabilities" is that KL."""
    import keras

    from edge_runtime.log import Progress

    t0 = time.time()
    rng = np.random.default_rng(seed)
    ref = p_val.argmax(1)

    def score(epoch):
        p = _predict(q.model, x_val)
        row = {"epoch": epoch, "val_agreement": float((p.argmax(1) == ref).mean()) if len(ref) else 1.0,
               "val_kl": round(_kl(p_val, p), 6)}
        settings.history.append(row)
        return row

    best = score(0)
    best_weights = q.model.get_weights()
    log(f"qat: fake-quant network before fine-tuning agrees with float on {best['val_agreement']:.4f} of "
        f"{len(ref)} validation images")
    q.set_mode(quantize=True, tracking=True)
    for w in q.model.layers:
        w.trainable = type(w).__name__ == "QuantizedWeights"
    if settings.distill == "logits":
        student, teach = _logits(q.model, q), _logits(teacher)
        loss = _centered_mse
    else:
        student, teach, loss = q.model, teacher, keras.losses.KLDivergence()
    student.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss)
    bs = settings.batch_size
    loss_value = 0.0
    for epoch in range(1, settings.epochs + 1):
        order = rng.permutation(len(x_train))
        bar = Progress(f"qat epoch {epoch}/{settings.epochs}", len(order), unit="img")
        for i in range(0, len(order), bs):
            xb = x_train[order[i:i + bs]].astype(np.float32)
            flip = rng.random(len(xb)) < 0.5
            xb[flip] = xb[flip, :, ::-1]
            if settings.mixup:
                lam = rng.beta(settings.mixup, settings.mixup, (len(xb), 1, 1, 1)).astype(np.float32)
                xb = lam * xb + (1 - lam) * xb[rng.permutation(len(xb))]
            target = np.asarray(teach(xb, training=False))
            loss_value = student.train_on_batch(xb, target)
            bar.add(len(xb))
            if not np.all(np.isfinite(np.asarray(loss_value, np.float64))):
                break
        bar.finish()
        if not np.all(np.isfinite(np.asarray(loss_value, np.float64))):
            log(f"qat epoch {epoch}/{settings.epochs}: the fine-tune diverged (loss not finite); keeping epoch "
                f"{best['epoch']}")
            settings.history.append({"epoch": epoch, "diverged": True})
            break
        row = score(epoch)
        log(f"qat epoch {epoch}/{settings.epochs}: validation agreement {row['val_agreement']:.4f}, "
            f"KL {row['val_kl']:.5f}")
        if on_epoch is not None:
            on_epoch(epoch, row)
        if (row["val_agreement"], -row["val_kl"]) > (best["val_agreement"], -best["val_kl"]):
            best, best_weights = row, q.model.get_weights()
    q.model.set_weights(best_weights)
    q.set_mode(quantize=True)
    settings.best_epoch = best["epoch"]
    settings.fine_tune_seconds = round(time.time() - t0, 1)
    return settings


def int8_from_qat(q: QatModel, x_calib: np.ndarray, io: str) -> bytes:
    """The full-int8 file of the fine-tuned network: its float graph (fake-quants off: the
    converter quantizes the weights by the same rule), calibrated for the tensors the
    fake-quants do not reach, with the learned ranges written over the rest."""
    from .int8 import _quantize

    ranges = q.ranges()
    q.set_mode(quantize=False)
    try:
        cal = calibrated_graph(q.model, x_calib)
    finally:
        q.set_mode(quantize=True)
    for key, anchor in q.ties.items():
        while anchor in q.ties and q.ties[anchor] != key:
            anchor = q.ties[anchor]
        if anchor in ranges:
            ranges[key] = ranges[anchor]
    where = {k: t for t, k in tensor_layers(cal, set(q.fake_quants))}
    return _quantize(write_ranges(cal, where, ranges), io, [])


def quantization_aware(model, x_train: np.ndarray, x_val: np.ndarray, x_calib: np.ndarray, io: str,
                       settings: QatSettings, *, x_test: np.ndarray | None = None, y_test=None,
                       log=lambda m: None) -> tuple[bytes, QatSettings]:
    """The whole QAT step for ``model`` (float, edgetl's layout): rebuild, place the fake-quants
    where the int8 file stores tensors, calibrate their ranges on training photos, fine-tune by
    distillation, and convert with the learned ranges. With ``x_test``/``y_test`` the fake-quant
    Keras network's own test accuracy is recorded beside the file's (they should agree)."""
    t0 = time.time()
    q = build_qat_model(model)
    q.set_mode(quantize=False)
    place(q, calibrated_graph(q.model, x_calib[:8]))
    settings.fake_quant_tensors = sum(f.active for f in q.fake_quants.values())
    settings.folded_batch_norms, settings.quantized_layers = q.folded, len(q.weights)
    settings.train_images, settings.val_images = int(len(x_train)), int(len(x_val))
    settings.calibration_batches = calibrate_ranges(q, x_train, settings.batch_size)
    log(f"qat: {settings.quantized_layers} layers with int8 weights ({settings.folded_batch_norms} batch norms "
        f"folded), {settings.fake_quant_tensors} int8 tensors; fine-tuning {settings.epochs} epoch(s) on "
        f"{len(x_train)} training photos")
    fine_tune(q, model, x_train, x_val, _predict(model, x_val), settings, log=log)
    if x_test is not None and len(x_test):
        settings.keras_test_accuracy = float((_predict(q.model, x_test).argmax(1) == np.asarray(y_test)).mean())
    blob = int8_from_qat(q, x_calib, io)
    settings.seconds = round(time.time() - t0, 1)
    return blob, settings
