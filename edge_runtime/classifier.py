"""`Classifier`: a deploy folder (or a .tflite) -> top-k labels for photos and camera frames."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .embedded import embedded_info
from .errors import UserError
from .image import RESIZE_METHOD, ImageInput, check_resize_method, load_image
from .interpreter import interpreter_class, load_interpreter
from .log import warn_once
from .manifest import NAME, load_manifest

# classes shown per photo unless asked otherwise: edge-predict, edge-serve and the API alike
DEFAULT_TOP_K = 3


class Classifier:
    """Classify images with a converted model.

    ``model``: the converter's deploy folder (reads manifest.json: labels, resize, quantization;
    checks the artifact's sha256 unless ``verify=False``) or a .tflite file (labels and output
    meaning from its embedded metadata files, else a labels.txt beside it). ``precision`` picks an
    artifact of the folder (default: the manifest's).
    """

    def __init__(self, model, threads: int | None = None, precision: str | None = None,
                 verify: bool = True, labels: list[str] | None = None):
        p = Path(model)
        self.manifest = None
        if p.is_dir():
            self.manifest = load_manifest(p)
            art = self.manifest.artifact(precision)
            path = p / art.file
            if not path.is_file():
                raise UserError(f"{path}: listed in {p / NAME} but missing; copy the deploy folder again")
            # read once: the bytes whose sha256 is checked are the bytes that run (a file being
            # overwritten in place meanwhile can neither pass the check nor crash a memory map)
            blob = _read_model(path)
            if verify and hashlib.sha256(blob).hexdigest() != art.sha256:
                raise UserError(f"{path}: sha256 does not match {p / NAME} (damaged or replaced file); "
                                "copy it again or pass --no-verify")
            self.labels = labels or self.manifest.labels
            self.resize_method = self.manifest.resize
            self.precision = art.precision
            self.probabilities = art.output.get("probabilities", True)
            _cross_check(p / NAME, path, self.manifest.labels, self.probabilities, blob)
            # JPEG draft decoding only where the converter verified it changes no accuracy
            self.draft = bool(self.manifest.data["input"].get("jpeg_draft", False))
        elif p.is_file():
            # a bare .tflite: labels and facts embedded by the converter, else a labels.txt beside it
            path = p
            blob = _read_model(p)
            emb_labels, info = embedded_info(blob)
            lf = p.with_name("labels.txt")
            self.labels = labels or emb_labels or (
                [l for l in lf.read_text().splitlines() if l] if lf.exists() else None)
            if labels is None and emb_labels is None:
                warn_once(f"{p}: no class names embedded and no labels.txt beside it; classes are shown as "
                          "0, 1, ... (copy labels.txt next to it, or use the deploy folder)")
            if not info and labels is None:   # a caller passing labels knows what it loads
                warn_once(f"{p}: no edgetl facts embedded; assuming bilinear resize and probability outputs "
                          "(use the deploy folder, whose manifest says)")
            self.resize_method = info.get("resize", RESIZE_METHOD)
            self.probabilities = bool(info.get("probabilities", True))
            self.precision = None
            self.draft = False
        else:
            raise UserError(f"{p}: no such model file or deploy folder")
        check_resize_method(self.resize_method)  # a newer converter's method: say so before loading
        self.path = path
        self.interpreter = load_interpreter(path, threads, content=blob)
        self.runtime = interpreter_class()[1]   # which TFLite runtime runs it (ai-edge-litert, ...)
        # a single frame's resize may use every core: inference waits for it anyway
        self.resize_workers = min(4, os.cpu_count() or 1)
        i = self.interpreter.get_input_details()[0]
        o = self.interpreter.get_output_details()[0]
        self._in, self._out = i["index"], o["index"]
        self.size = int(i["shape"][1])
        self.input_dtype = i["dtype"]
        self.in_scale, self.in_zero = i["quantization"]
        self.out_scale, self.out_zero = o["quantization"]
        n = int(o["shape"][-1])
        if self.labels is None:
            self.labels = [str(k) for k in range(n)]
        if len(self.labels) != n:
            raise UserError(f"{path}: model has {n} outputs but {len(self.labels)} labels")

    # -- preprocessing: resize only; the model does the rest
    def preprocess(self, image: ImageInput, draft: bool | None = None, workers: int | None = None) -> np.ndarray:
        """Resize (and quantize) one image; ``draft`` (default: the manifest's verified choice)
        decodes JPEG files at a reduced DCT scale first, which is faster for large photos;
        ``workers`` (default ``resize_workers``) threads share the resize of a large frame."""
        x = load_image(image, self.size, self.resize_method, draft=self.draft if draft is None else draft,
                       workers=self.resize_workers if workers is None else workers)
        if self.input_dtype == np.float32:
            return x.astype(np.float32)[None]
        if self.in_scale and (abs(self.in_scale - 1.0) > 1e-3 or self.in_zero != 0 or self.input_dtype != np.uint8):
            info = np.iinfo(self.input_dtype)
            q = np.round(x.astype(np.float32) / self.in_scale + self.in_zero)
            return np.clip(q, info.min, info.max).astype(self.input_dtype)[None]
        return x[None]

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Raw model call on a preprocessed (1, S, S, 3) tensor -> class scores (float)."""
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out)[0]
        if y.dtype != np.float32:
            y = (y.astype(np.float32) - self.out_zero) * self.out_scale
        return y if self.probabilities else softmax(y)

    def predict(self, image: ImageInput, draft: bool | None = None) -> np.ndarray:
        return self.invoke(self.preprocess(image, draft))

    def top1(self, images, label: str | None = None) -> np.ndarray:
        """Index of the top class for each image (no draft decoding): what verification compares.
        ``label``: show progress under that name."""
        from .log import Progress

        bar = Progress(label, len(images), unit="img") if label else None
        out = np.empty(len(images), np.int64)
        for k, im in enumerate(images):
            out[k] = int(self.invoke(self.preprocess(im, draft=False)).argmax())
            if bar:
                bar.add()
        if bar:
            bar.finish()
        return out

    @staticmethod
    def check_top_k_threshold(top_k: int, threshold: float, names=("top_k", "threshold")) -> None:
        """The one rule for what a caller may ask of `classify` (CLI and server alike); ``names``:
        how the caller spells the two options in its error messages."""
        if top_k < 1:
            raise UserError(f"{names[0]} {top_k}: show at least 1 class ({names[0]} 1 or more)")
        if not 0.0 <= threshold <= 1.0:   # also refuses nan
            raise UserError(f"{names[1]} {threshold}: scores are probabilities; give a number from 0 to 1")

    def classify(self, image: ImageInput, top_k: int = DEFAULT_TOP_K, draft: bool | None = None) -> list[tuple[str, float]]:
        p = self.predict(image, draft)
        order = np.argsort(-p, kind="stable")[:top_k]
        return [(self.labels[i], float(p[i])) for i in order]

    def classify_batch(self, images, top_k: int = DEFAULT_TOP_K) -> list[list[tuple[str, float]]]:
        return [self.classify(im, top_k) for im in images]


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); copy the deploy folder again") from None


def _cross_check(manifest: Path, model: Path, labels: list[str], probabilities: bool, blob: bytes) -> None:
    """The manifest is not covered by any hash; the converter embeds the labels and output meaning
    in each .tflite too. A disagreement means an edited manifest or a model from another run:
    wrong class names or raw scores would follow, so refuse."""
    emb_labels, info = embedded_info(blob)
    if emb_labels is not None and emb_labels != list(labels):
        raise UserError(f"{manifest}: its labels differ from those embedded in {model.name} "
                        f"({labels[:3]}... vs {emb_labels[:3]}...); copy the deploy folder again or re-run edgetl convert")
    if "probabilities" in info and bool(info["probabilities"]) != bool(probabilities):
        raise UserError(f"{manifest}: says probabilities={probabilities} but {model.name} says "
                        f"{bool(info['probabilities'])}; copy the deploy folder again or re-run edgetl convert")


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities from scores (logits) along the last axis, overflow-safe."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
