"""The "ideal" image of a class (the AI-for-Beginners seed's ideal cat): gradient ascent on the
class's logit from grey noise, with a total-variation penalty so the result is not pixel noise."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edge_runtime.errors import UserError

from .optimize import ascend, start_noise, total_variation
from .subject import Subject


@dataclass
class DreamResult:
    image: np.ndarray          # uint8 RGB at the model's size
    class_name: str
    class_index: int
    probability: float         # of the saved (rounded) image, by the model it was made for
    total_variation: float
    steps: int                 # taken (ascent stops once ``until`` is reached)
    seed: int
    tv_weight: float
    jitter: int
    lr: float
    until: float
    model: str

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("image")
        return d


def dream(subject: Subject, class_name: str | int, steps: int = 200, tv_weight: float = 6.0, seed: int = 0,
          jitter: int = 4, lr: float = 3.0, *, until: float = 1.0, progress=None) -> DreamResult:
    """The image ``subject`` scores highest for the class, reached by at most ``steps`` ascent
    steps; stops once the class probability of the rounded image reaches ``until`` (1 = never)."""
    if steps < 1:
        raise UserError(f"--steps {steps}: give 1 or more")
    if not (math.isfinite(tv_weight) and math.isfinite(lr)) or tv_weight < 0 or jitter < 0 or lr <= 0:
        raise UserError(f"--tv-weight {tv_weight:g}, --jitter {jitter}, --lr {lr:g}: --tv-weight and --jitter "
                        "must be finite numbers of 0 or more, --lr a finite number more than 0")
    if not 0 < until <= 1:
        raise UserError(f"--until {until}: a probability above 0 and at most 1")
    c = subject.class_index(class_name)
    rng = np.random.default_rng(seed)
    x0 = start_noise(rng, 1, subject.size)

    def objective(maps, logits):
        return logits[:, c]

    def done(images):
        return subject.probabilities(images)[:, c] >= until

    image, taken = ascend(subject, (), objective, x0, steps, rng, lr=lr, tv_weight=tv_weight, jitter=jitter,
                          done=done if until < 1 else None, progress=progress)
    prob = float(subject.probabilities(image)[0, c])
    return DreamResult(image=image[0], class_name=subject.classes[c], class_index=c, probability=prob,
                       total_variation=float(total_variation(image)[0]), steps=taken, seed=seed,
                       tv_weight=tv_weight, jitter=jitter, lr=lr, until=until, model=subject.name)
