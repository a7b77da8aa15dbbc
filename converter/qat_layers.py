"""The Keras layers of quantization-aware training (see converter.qat): int8 weights with batch
norm folded in, per-tensor int8 fake-quants, and the small steps a graph is rebuilt from. Imported
only when QAT runs (it imports Keras)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

EMA = 0.99     # range tracking while fine-tuning (per step)


def per_channel_fake_quant(w, axes):
    """Symmetric int8 per output channel, values -127..127, straight-through gradient."""
    m = ops.maximum(ops.max(ops.abs(w), axis=axes, keepdims=True), 1e-12)
    s = ops.stop_gradient(m / 127.0)
    q = ops.clip(ops.round(w / s), -127.0, 127.0) * s
    return w + ops.stop_gradient(q - w)


class QuantizedWeights(keras.layers.Layer):
    """A conv / depthwise conv / dense layer with batch norm folded in and int8 weights."""

    def __init__(self, source, **kw):
        super().__init__(name=source.name, **kw)
        cfg = source.get_config()
        self.kind = {"Conv2D": "conv", "DepthwiseConv2D": "depthwise", "Dense": "dense"}[type(source).__name__]
        self.strides, self.padding = cfg.get("strides", 1), cfg.get("padding", "valid")
        self.dilation = cfg.get("dilation_rate", 1)
        self.activation = keras.activations.get(cfg.get("activation", "linear"))
        kernel = np.asarray(source.get_weights()[0], np.float32)
        bias = (np.asarray(source.get_weights()[1], np.float32) if getattr(source, "use_bias", False)
                else np.zeros(self._channels(kernel), np.float32))
        self._init = (kernel, bias)
        self.quantize = False

    def _channels(self, kernel):
        return kernel.shape[-1] if self.kind != "depthwise" else kernel.shape[2] * kernel.shape[3]

    def build(self, input_shape):
        k, b = self._init
        self.kernel = self.add_weight(shape=k.shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=b.shape, initializer="zeros", name="bias")
        self.kernel.assign(k)
        self.bias.assign(b)

    def fold(self, bn) -> None:
        """Fold a following inference-mode batch norm into kernel and bias."""
        k, b = np.asarray(self.kernel), np.asarray(self.bias)
        mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
        gamma = np.asarray(bn.gamma) if bn.scale else np.ones_like(mean)
        beta = np.asarray(bn.beta) if bn.center else np.zeros_like(mean)
        f = gamma / np.sqrt(var + bn.epsilon)
        if self.kind == "depthwise":
            k = k * f.reshape(k.shape[2], k.shape[3])
        else:
            k = k * f
        self.kernel.assign(k.astype(np.float32))
        self.bias.assign(((b - mean) * f + beta).astype(np.float32))

    def call(self, x):
        k = self.kernel
        if self.quantize:
            k = per_channel_fake_quant(k, (0, 1) if self.kind == "depthwise" else tuple(range(k.ndim - 1)))
        if self.kind == "conv":
            y = ops.conv(x, k, strides=self.strides, padding=self.padding, dilation_rate=self.dilation)
        elif self.kind == "depthwise":
            y = ops.depthwise_conv(x, k, strides=self.strides, padding=self.padding,
                                   dilation_rate=self.dilation)
        else:
            y = ops.matmul(x, k)
        return self.activation(y + self.bias)


class FakeQuant(keras.layers.Layer):
    """Per-tensor int8 fake-quant of one layer's output; inactive until the int8 graph is
    known to store that tensor (then it is an identity, and exports as nothing)."""

    def __init__(self, key: str, **kw):
        super().__init__(name=f"fq__{key}", **kw)
        self.key, self.active, self.quantize = key, False, False
        self.calibrating = self.tracking = False

    def build(self, input_shape):
        self.lo = self.add_weight(shape=(), initializer="zeros", trainable=False, name="lo")
        self.hi = self.add_weight(shape=(), initializer="zeros", trainable=False, name="hi")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def range(self):
        lo = ops.minimum(self.lo, 0.0)
        hi = ops.maximum(self.hi, lo + 1e-6)
        return lo, ops.maximum(hi, 0.0)

    def call(self, x, training=False):
        if not (self.active and self.quantize):
            return x
        if self.calibrating or (training and self.tracking):
            bmin, bmax = ops.min(ops.stop_gradient(x)), ops.max(ops.stop_gradient(x))
            if self.calibrating:     # running mean of the batches' extremes
                n = self.seen + 1.0
                self.lo.assign(self.lo + (bmin - self.lo) / n)
                self.hi.assign(self.hi + (bmax - self.hi) / n)
                self.seen.assign(n)
            else:
                self.lo.assign(EMA * self.lo + (1 - EMA) * bmin)
                self.hi.assign(EMA * self.hi + (1 - EMA) * bmax)
        lo, hi = self.range()
        s = (hi - lo) / 255.0
        zp = ops.round(-lo / s)
        v = x / s    # rounded half away from zero, as TFLite's kernels round
        q = (ops.clip(ops.sign(v) * ops.floor(ops.abs(v) + 0.5) + zp, 0.0, 255.0) - zp) * s
        inside = ops.clip(x, lo, hi)
        return inside + ops.stop_gradient(q - inside)


class ConstantOp(keras.layers.Layer):
    """``x * value`` or ``x + value``: one step of a rescaling or normalization layer, apart
    so that its own output is fake-quantized as the int8 file stores it."""

    def __init__(self, name, op, value, **kw):
        super().__init__(name=name, trainable=False, **kw)
        self.op, self.value = op, np.asarray(value, np.float32)

    def call(self, x):
        v = ops.convert_to_tensor(self.value)
        return x * v if self.op == "mul" else x + v


class Step(keras.layers.Layer):
    """A bare Keras operation of a functional graph (``x * (1 / 6)`` in hard-sigmoid) as a
    layer, so its ops carry a name the int8 file's tensors can be traced back to."""

    def __init__(self, op, args, kwargs, **kw):
        super().__init__(name=op.name, trainable=False, **kw)
        self.op, self.kwargs = op, kwargs
        self.tensors = [i for i, a in enumerate(args) if keras.backend.is_keras_tensor(a)]
        self.consts = {i: a for i, a in enumerate(args) if i not in self.tensors}
        self.n = len(args)

    def call(self, *tensors):
        given = dict(zip(self.tensors, tensors))
        return self.op(*[given[i] if i in given else self.consts[i] for i in range(self.n)], **self.kwargs)

    def inputs_of(self, args):
        return [args[i] for i in self.tensors]
