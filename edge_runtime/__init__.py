"""edgetl's device runtime: numpy + Pillow + a TFLite interpreter, never TensorFlow."""
from .classifier import Classifier
from .errors import UserError
from .image import ImageError, load_image, open_image

__all__ = ["Classifier", "UserError", "ImageError", "load_image", "open_image", "edgetl_version"]


def edgetl_version() -> str:
    """The installed edgetl's version (what servers report and trackers tag)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("edgetl")
    except PackageNotFoundError:
        return "unknown"
