"""int8 head refit: the head solved again for the features the int8 backbone really produces.

Post-training int8 leaves every pooled feature a little off (on MobileNetV2 the pooled vector of
an int8 body is about a quarter of its own spread away from the float one), and part of that
error is systematic: images of one class are pushed the same way, which top-1 then shows as
flips. The head is one linear layer on those features, so the remedy is cheap and exact: on the
calibration images (training photos, never the test split), solve for the head (W', b') whose
logits from the int8 features match the float model's logits, pulled towards the float head:

    min_{W', b'}  sum_i |Fq_i W' + b' - (F_i W + b)|^2  +  lam * n * v * |W' - W|^2

(``Fq``/``F``: int8/float features, ``v`` the mean variance of an int8 feature, so ``lam`` is free
of the data's scale). Fitting the mean alone is the bias correction of Nagel et al. 2019 ("Data-
Free Quantization"); this fits the linear map the head can express. The graph is unchanged (same
ops, same delegation, same latency); only the head's weights and bias differ in the int8 file.

The strength is chosen on the validation split by the mean KL divergence of the int8 model's
class probabilities from the float model's (top-1 agreement on a few hundred photos moves by
whole photos and is mostly flat), and the refit is kept only when it lowers that divergence
without lowering validation agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID = (30.0, 10.0, 3.0)     # lam values tried (see the module docstring)
FULLY_CONNECTED = 9          # TFLite BuiltinOperator code


@dataclass
class Head:
    """Where the classifier's last dense layer lives in one flatbuffer (tensor indices)."""
    features: int      # its input: the pooled feature vector
    weights: int       # [classes, width]
    bias: int          # [classes]
    logits: int        # its output


def find_head(blob: bytes) -> Head | None:
    """The last FULLY_CONNECTED op of the main graph, or None for a model that does not end in
    one dense layer with a bias (TFLite drops an all-zero bias; refit then does not apply)."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(blob))
    g = m.subgraphs[0]

    def code(op):
        oc = m.operatorCodes[op.opcodeIndex]
        return max(oc.builtinCode, oc.deprecatedBuiltinCode)

    fcs = [op for op in g.operators if code(op) == FULLY_CONNECTED]
    if not fcs or len(fcs[-1].inputs) < 3 or fcs[-1].inputs[2] < 0:
        return None
    fc = fcs[-1]
    return Head(features=int(fc.inputs[0]), weights=int(fc.inputs[1]), bias=int(fc.inputs[2]),
                logits=int(fc.outputs[0]))


def read_head(blob: bytes, head: Head) -> tuple[np.ndarray, np.ndarray]:
    """(W [width, classes], b [classes]) of a float (calibrated, not yet quantized) model."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(blob))
    t = m.subgraphs[0].tensors

    def arr(i):
        return np.frombuffer(bytes(m.buffers[t[i].buffer].data), np.float32).reshape(t[i].shape)
    return arr(head.weights).T.copy(), arr(head.bias).copy()


def write_head(blob: bytes, head: Head, W: np.ndarray, b: np.ndarray) -> bytes:
    """``blob`` (float, calibrated) with its head's weights replaced; the recorded ranges stay."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(blob))   # a fresh object: ``blob`` is untouched
    t = m.subgraphs[0].tensors
    for i, value in ((head.weights, W.T), (head.bias, b)):
        data = np.ascontiguousarray(value, np.float32)
        if list(data.shape) != list(t[i].shape):
            raise ValueError(f"head tensor {i}: shape {data.shape}, expected {list(t[i].shape)}")
        m.buffers[t[i].buffer].data = np.frombuffer(data.tobytes(), np.uint8)
    return bytes(fbu.convert_object_to_bytearray(m))


def read_tensors(blob: bytes, tensors: list[int], x: np.ndarray, threads=None) -> list[np.ndarray]:
    """Run ``blob`` on images ``x`` (N, S, S, 3, RGB 0..255) and return the named tensors for
    every image, dequantized to float and flattened (N, values): the model's outputs are
    re-pointed at them, so the delegate runs the graph as usual. Flat, because a head may read
    a (1, 1, 1, C) map directly (a fully connected op flattens its input; MobileNetV4's pooled
    head conv gives one)."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.convert_bytearray_to_object(bytearray(blob))
    m.subgraphs[0].outputs = list(tensors)
    it = Interpreter(model_content=bytes(fbu.convert_object_to_bytearray(m)), num_threads=threads or 2)
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    scale, zero = inp["quantization"]
    rows = [[] for _ in outs]
    for img in x:
        v = img.astype(np.float32)[None]
        if np.issubdtype(inp["dtype"], np.integer):
            info = np.iinfo(inp["dtype"])
            v = np.clip(np.round(v / (scale or 1.0)) + zero, info.min, info.max)
        it.set_tensor(inp["index"], v.astype(inp["dtype"]))
        it.invoke()
        for r, o in zip(rows, outs):
            val = it.get_tensor(o["index"])[0].astype(np.float32)
            s, z = o["quantization"]
            r.append(((val - z) * s if s else val).reshape(-1))
    return [np.stack(r) if r else np.zeros((0,), np.float32) for r in rows]


def refit(Fq: np.ndarray, target: np.ndarray, W: np.ndarray, b: np.ndarray, lam: float):
    """The ridge problem of the module docstring in closed form -> (W', b')."""
    Fq, target = Fq.astype(np.float64), target.astype(np.float64)
    resid = target - (Fq @ W + b)              # what the float head misses on int8 features
    mu = Fq.mean(0)
    Xc, Rc = Fq - mu, resid - resid.mean(0)
    G = Xc.T @ Xc
    ridge = lam * max(np.trace(G) / len(G), 1e-12)
    dW = np.linalg.solve(G + ridge * np.eye(len(G)), Xc.T @ Rc)
    return (W + dW).astype(np.float32), (b + resid.mean(0) - mu @ dW).astype(np.float32)


def softmax_kl(z_ref: np.ndarray, z: np.ndarray) -> float:
    """Mean KL(p_ref || p) over images, from logits."""
    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))
    lr, lq = log_softmax(z_ref.astype(np.float64)), log_softmax(z.astype(np.float64))
    return float((np.exp(lr) * (lr - lq)).sum(1).mean()) if len(z_ref) else 0.0


def refit_head(calibrated: bytes, quantized: bytes, x_fit: np.ndarray, threads=None, grid=GRID):
    """(W', b') for ``calibrated`` (float model with its ranges) at every ``grid`` strength, fit on
    ``x_fit`` to the features of ``quantized`` (its int8 model, whose head is to be replaced).
    Returns (head, {lam: (W', b')}) or None when the model has no dense head."""
    head = find_head(calibrated)
    if head is None or not len(x_fit):
        return None
    W, b = read_head(calibrated, head)
    (z_float,) = read_tensors(calibrated, [head.logits], x_fit, threads)
    (Fq,) = read_tensors(quantized, [find_head(quantized).features], x_fit, threads)
    return head, {lam: refit(Fq, z_float, W, b, lam) for lam in grid}
