"""Training configuration: a plain dataclass, saved as RUN/config.json next to every result."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edge_runtime.image import RESIZE_METHOD


@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "mobilenet_v2"
    alpha: float | None = None          # width multiplier; None = the backbone's default
    size: int | None = None             # input side; None = the backbone's native size
    weights: str = "imagenet"           # imagenet | none | PATH
    head: str = "softmax"               # softmax | linear-svm
    resize: str = RESIZE_METHOD         # edge_runtime.image.RESIZE_METHODS; the device repeats it
    # phase 1: head on cached features
    head_solver: str = "lbfgs"          # lbfgs (exact, L2 chosen on held-out data) | sgd (Adam epochs)
    refit: bool = True                  # lbfgs: refit on train+val with the chosen L2 (frozen runs)
    epochs: int = 60                    # sgd only, like lr, dropout, l2, label_smoothing, patience
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.2
    l2: float = 1e-4
    label_smoothing: float = 0.1
    class_weights: str = "auto"         # auto (balanced when imbalance >= 1.5) | balanced | none
    patience: int = 10
    # phase 2: fine-tuning
    fine_tune: bool = False
    fine_tune_blocks: int = 6
    fine_tune_epochs: int = 8
    fine_tune_lr: float = 1e-4
    warmup_epochs: float = 0.5
    fine_tune_patience: int = 3
    augment: bool = True
    # data and reproducibility
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    # hardware
    backend: str | None = None          # tensorflow | jax; None = Keras' configured backend
    strategy: str = "auto"              # auto | default | mirrored | multiworker
    mixed_precision: str = "auto"       # auto (on GPU only) | on | off
    extra: dict = field(default_factory=dict)

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
        return cls(**d)
