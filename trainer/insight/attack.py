"""Adversarial photos (the AI-for-Beginners seed's dog the network calls a cat), and whether the
models on the device are fooled too.

Projected gradient descent (Madry et al., 2018) in the model's input space, RGB 0..255: signed
gradient steps of whole pixel levels, projected back into the L-infinity ball of radius ``eps``
around the photo and into 0..255. Whole-level steps keep every iterate an exact uint8 image, so
the saved PNG is exactly what was attacked. Targeted: towards ``target``; untargeted: away from
the photo's label (its true class, or the model's prediction when none is known).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError

from ..runs import rundir as R
from .subject import Subject, as_list, keras_tf

REPORT_EPS = ("1/255", "2/255", "4/255", "8/255")


def parse_eps(text: str | float) -> float:
    """``8/255``, ``0.03`` or ``8`` (pixel levels when above 1) -> a fraction of the 0..255 range."""
    try:
        v = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--eps {text!r}: give a size like 8/255 or 0.03") from None
    if v > 1:
        v = v / 255.0
    if not 0 < v <= 1:   # also NaN
        raise UserError(f"--eps {text!r}: must be above 0 and at most 255/255, the whole pixel range (e.g. 8/255)")
    return v


def pgd(subject: Subject, images: np.ndarray, labels: np.ndarray, targeted: bool, eps: float, steps: int = 20,
        batch_size: int = 16, *, progress=None) -> np.ndarray:
    """Adversarial uint8 images within ``eps`` (fraction of 255) of ``images``. ``labels``: the
    target classes (targeted) or the classes to move away from (untargeted)."""
    keras, tf = keras_tf()
    probe = subject.probe(())
    eps_px = max(1, int(round(eps * 255)))
    step_px = float(max(1, math.ceil(2.5 * eps_px / steps)))
    sign = -1.0 if targeted else 1.0

    @tf.function(reduce_retracing=True)
    def step(x, lo, hi, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = as_list(probe(x, training=False))[-1]
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        g = tape.gradient(loss, x)
        return tf.clip_by_value(x + sign * step_px * tf.sign(g), lo, hi)

    out = []
    total = math.ceil(len(images) / batch_size) * steps
    done = 0
    for i in range(0, len(images), batch_size):
        x0 = np.asarray(images[i:i + batch_size], np.float32)
        lo = tf.constant(np.clip(x0 - eps_px, 0, 255))
        hi = tf.constant(np.clip(x0 + eps_px, 0, 255))
        y = tf.constant(np.asarray(labels[i:i + batch_size], np.int32))
        x = tf.constant(x0)
        for _ in range(steps):
            x = step(x, lo, hi, y)
            done += 1
            if progress:
                progress(done, total)
        out.append(np.round(x.numpy()).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, subject.size, subject.size, 3), np.uint8)


def device_models(run: Path | None) -> dict:
    """{precision: Classifier} for every .tflite in RUN/deploy, each loaded (and sha256-checked)
    once; empty when the run was not converted."""
    if run is None or not (Path(run) / R.DEPLOY / "manifest.json").exists():
        return {}
    from edge_runtime.classifier import Classifier
    from edge_runtime.manifest import load_manifest

    deploy = Path(run) / R.DEPLOY
    return {a["precision"]: Classifier(deploy, precision=a["precision"])
            for a in load_manifest(deploy).data["artifacts"]}


def device_probabilities(clf, images: np.ndarray) -> np.ndarray:
    """Each image through one .tflite with the edge runtime (what the device sees)."""
    return np.stack([clf.predict(im) for im in images]) if len(images) else np.zeros((0, len(clf.labels)))


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    from edge_runtime.image import encode_jpeg

    return np.asarray(Image.open(io.BytesIO(encode_jpeg(image, quality))).convert("RGB"))


@dataclass
class AttackResult:
    original: np.ndarray
    adversarial: np.ndarray
    target: str | None
    eps: float
    steps: int
    model: dict                # {"original": [label, p], "adversarial": [label, p], "fooled": bool}
    linf: float                # largest change of one pixel level, as a fraction of 255
    l2: float                  # Euclidean size of the change in 0..1 units over all pixels
    devices: list = field(default_factory=list)   # per .tflite: the same as ``model`` + precision
    jpeg: dict | None = None   # the same after a JPEG re-encode, when asked

    @property
    def success(self) -> bool:
        return bool(self.model["fooled"])

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("original"), d.pop("adversarial")
        d["success"] = self.success
        return d


def _verdict(classes, before: np.ndarray, after: np.ndarray, target: int | None, source: int) -> dict:
    a, b = int(before.argmax()), int(after.argmax())
    fooled = b == target if target is not None else b != source
    return {"original": [classes[a], float(before[a])], "adversarial": [classes[b], float(after[b])],
            "fooled": bool(fooled)}


def _judge(subject: Subject, original: np.ndarray, adv: np.ndarray, target: int | None, source: int,
           devices: dict) -> tuple[dict, list]:
    p = subject.probabilities(np.stack([original, adv]))
    model = _verdict(subject.classes, p[0], p[1], target, source)
    per_device = []
    for prec, clf in devices.items():
        d = device_probabilities(clf, [original, adv])
        per_device.append({"precision": prec, **_verdict(subject.classes, d[0], d[1], target, source)})
    return model, per_device


def attack(subject: Subject, image, target: str | int | None = None, eps: float | str = 8 / 255,
           steps: int = 20, jpeg: int | None = None, devices: bool = True, *, progress=None) -> AttackResult:
    """Attack one photo; judge the float model and (``devices``) every artifact in RUN/deploy on
    the lossless result, and after a JPEG re-encode at quality ``jpeg`` when given."""
    eps = parse_eps(eps) if isinstance(eps, str) else float(eps)
    if steps < 1:
        raise UserError(f"--steps {steps}: give 1 or more")
    if jpeg is not None and not 1 <= jpeg <= 100:
        raise UserError(f"--jpeg {jpeg}: a JPEG quality from 1 to 100")
    x = subject.load(image)
    source = int(subject.probabilities(x[None])[0].argmax())
    t = None if target is None else subject.class_index(target)
    if t is not None and t == source:
        raise UserError(f"the model already calls this photo {subject.classes[t]!r}; pick another --target")
    adv = pgd(subject, x[None], np.array([source if t is None else t]), t is not None, eps, steps,
              progress=progress)[0]
    arts = device_models(subject.run) if devices else {}
    model, per_device = _judge(subject, x, adv, t, source, arts)
    diff = (adv.astype(np.float64) - x.astype(np.float64)) / 255.0
    result = AttackResult(original=x, adversarial=adv, target=None if t is None else subject.classes[t], eps=eps,
                          steps=steps, model=model, linf=float(np.abs(diff).max()),
                          l2=float(np.sqrt((diff ** 2).sum())), devices=per_device)
    if jpeg is not None:
        j = jpeg_roundtrip(adv, jpeg)
        jm, jd = _judge(subject, x, j, t, source, arts)
        result.jpeg = {"quality": jpeg, "model": jm, "devices": jd}
    return result


def robustness_report(subject: Subject, n: int = 100, eps_list=REPORT_EPS, steps: int = 10,
                      progress=None) -> dict:
    """Untargeted success rate per eps on up to ``n`` test photos the float model gets right, and
    how often a successful adversarial photo also fools each .tflite in RUN/deploy (transfer)."""
    if n < 1:
        raise UserError(f"--n {n}: give 1 or more")
    _, y, arrays = subject.test_split("--report")
    right = np.flatnonzero(subject.probabilities(arrays).argmax(axis=1) == y)[:n] if len(arrays) else []
    if not len(right):
        raise UserError(f"{subject.run}: the model gets no test photo right; nothing to attack")
    x, labels = arrays[right], y[right]
    arts = device_models(subject.run)
    clean = {p: device_probabilities(clf, x).argmax(axis=1) for p, clf in arts.items()}
    rows = []
    for k, e in enumerate(eps_list):
        eps = parse_eps(e)
        adv = pgd(subject, x, labels, False, eps, steps,
                  progress=(lambda d, t, k=k: progress(k * t + d, t * len(eps_list))) if progress else None)
        fooled = subject.probabilities(adv).argmax(axis=1) != labels
        row = {"eps": str(e), "eps_value": eps, "images": int(len(x)), "success_rate": float(fooled.mean()),
               "transfer": {}}
        for p, clf in arts.items():
            dev_wrong = device_probabilities(clf, adv).argmax(axis=1) != labels
            row["transfer"][p] = {
                "transfer_rate": float(dev_wrong[fooled].mean()) if fooled.any() else None,
                "fooled_rate": float(dev_wrong.mean()),
                "clean_accuracy": float((clean[p] == labels).mean())}
        rows.append(row)
    return {"run": str(subject.run), "images": int(len(x)), "steps": steps, "attack": "untargeted PGD, L-inf",
            "artifacts": list(arts), "rows": rows}
