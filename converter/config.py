"""Conversion settings: the one source of `edgetl convert`'s options and of ``convert()``'s
defaults (the precision flags come from converter.precision's registry)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge_runtime.settings import NON_NEGATIVE, POSITIVE, Range, check_ranges, opt

from .precision import IO_TYPES, PRECISIONS

MIN_CALIBRATION = 10   # photos; int8 ranges from fewer are guesses
DEFAULT_PRECISIONS = ("fp32", "int8")


@dataclass
class ConvertConfig:
    precisions: tuple[str, ...] = field(default=DEFAULT_PRECISIONS, metadata={"cli": False})
    out: str | None = opt(None, "Output folder (default RUN/deploy).")
    io: str = opt("uint8", "int8 model input/output type (uint8 suits camera pixels).", choices=IO_TYPES)
    calibration_samples: int = opt(300, "Training photos int8 sets its ranges from (fewer than 10 are guesses).",
                                   range=Range(MIN_CALIBRATION))
    max_drop: float = opt(1.0, "Accuracy budget in points: an artifact fails verification when it loses more than "
                               "this against float AND an exact McNemar test on the photos where they disagree says "
                               "the loss is not chance (p < 0.05). Validation photos join a test split under 200.",
                          range=NON_NEGATIVE)
    force: bool = opt(False, "Replace another run's edgetl deploy folder. A re-run replaces this run's own artifacts "
                             "without it; a folder holding files edgetl did not write is always refused.",
                      flag="--force")
    verbose: bool = opt(False, "Also print int8's per-layer quantization error (worst layers) and the converter's "
                               "own log.", flag="--verbose")
    int8_recovery: bool = opt(True, "Plain full-int8: do not keep the most sensitive layers in float even when "
                                    "int8 disagrees with float on more than 1 % of validation images.",
                              flag="--no-int8-recovery")
    qat: bool = opt(False, "Also build int8-qat: a quantization-aware fine-tune of the run's network on its train "
                           "split (batch norm folded, int8 weights and activations simulated, distilled from the "
                           "float model), converted with the ranges it learned. Both int8 files are verified; the "
                           "one that agrees more with float on the validation split is the default. Takes minutes "
                           "on a CPU (about a minute per epoch for MobileNetV2 0.35@128 on 3,000 photos, 2 cores).",
                    flag="--qat")
    qat_epochs: int = opt(2, "Fine-tune epochs of --qat (the best epoch on validation is kept).", range=Range(1))
    qat_lr: float = opt(1e-5, "Adam learning rate of --qat.", range=POSITIVE)
    data_root: str | None = opt(None, "Where the run's data folder lives now, if it moved after training.")
    threads: int | None = field(default=None, metadata={"cli": False})
    track: str | None = field(default=None, metadata={"cli": False})   # the shared --track option

    def __post_init__(self):
        from edge_runtime.errors import UserError

        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UserError(f"precision {', '.join(map(str, unknown)) or '(none)'}: choose from {', '.join(PRECISIONS)}")
        if self.qat:
            self.precisions = (*self.precisions, "int8", "int8-qat")
        self.precisions = tuple(p for p in PRECISIONS if p in self.precisions)   # registry order
        check_ranges(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        return d
