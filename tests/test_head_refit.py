"""int8 head refit (converter.head_refit): the head solved again for the int8 body's features."""
import numpy as np

from converter.head_refit import find_head, read_head, read_tensors, refit, softmax_kl, write_head


def _quantized_features(F: np.ndarray, rng) -> np.ndarray:
    """What an int8 body does to pooled features, as measured on MobileNetV2: a per-feature gain
    and offset (the systematic part) plus independent noise."""
    gain = 1 + 0.2 * rng.standard_normal(F.shape[1])
    offset = 0.2 * rng.standard_normal(F.shape[1])
    return (F * gain + offset + 0.1 * rng.standard_normal(F.shape)).astype(np.float32), gain, offset


def test_the_refit_head_undoes_a_systematic_feature_error_on_images_it_never_saw():
    rng = np.random.default_rng(0)
    d, n = 64, 4
    W, b = rng.standard_normal((d, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    F_fit, F_new = rng.gamma(2.0, 1.0, (300, d)), rng.gamma(2.0, 1.0, (1000, d))
    Fq_fit, gain, offset = _quantized_features(F_fit, rng)
    Fq_new = F_new * gain + offset + 0.1 * rng.standard_normal(F_new.shape)
    W2, b2 = refit(Fq_fit, F_fit @ W + b, W, b, lam=0.1)
    z_float = F_new @ W + b
    before, after = softmax_kl(z_float, Fq_new @ W + b), softmax_kl(z_float, Fq_new @ W2 + b2)
    assert after < 0.5 * before
    assert (np.argmax(Fq_new @ W2 + b2, 1) == z_float.argmax(1)).mean() > \
        (np.argmax(Fq_new @ W + b, 1) == z_float.argmax(1)).mean()


def test_a_strong_penalty_keeps_the_float_weights_and_corrects_only_the_mean():
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((16, 3)), rng.standard_normal(3)
    F = rng.gamma(2.0, 1.0, (200, 16))
    Fq, _, _ = _quantized_features(F, rng)
    W2, b2 = refit(Fq, F @ W + b, W, b, lam=1e9)
    np.testing.assert_allclose(W2, W, atol=1e-5)
    # bias correction: the mean logit over the fit images is the float model's
    np.testing.assert_allclose((Fq @ W2 + b2).mean(0), (F @ W + b).mean(0), atol=1e-4)


def test_the_head_is_found_read_rewritten_and_its_tensors_read_in_a_tflite_model():
    import keras

    from converter.convert import tflite_bytes

    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(5, 1, name="body")(inp))
    dense = keras.layers.Dense(3, name="logits")
    model = keras.Model(inp, keras.layers.Softmax()(dense(x)))
    W0 = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    dense.set_weights([W0, np.array([0.5, -1.0, 2.0], np.float32)])   # a zero bias is dropped by TFLite
    blob = tflite_bytes(model, "fp32")
    head = find_head(blob)
    W, b = read_head(blob, head)
    np.testing.assert_allclose(W, dense.get_weights()[0], rtol=1e-6)
    np.testing.assert_allclose(b, dense.get_weights()[1], rtol=1e-6)

    W2, b2 = 2 * W + 1, b - 3
    blob2 = write_head(blob, head, W2, b2)
    np.testing.assert_allclose(read_head(blob2, find_head(blob2))[0], W2, rtol=1e-6)
    images = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    feats, logits = read_tensors(blob2, [head.features, head.logits], images)
    np.testing.assert_allclose(feats, keras.Model(inp, x).predict(images.astype(np.float32), verbose=0), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(logits, feats @ W2 + b2, rtol=1e-4, atol=1e-4)
