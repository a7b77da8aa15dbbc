"""edgetl's device runtime: numpy + Pillow + a TFLite interpreter, never TensorFlow."""
from .errors import UserError
from .image import ImageError, load_image, open_image

__all__ = ["UserError", "ImageError", "load_image", "open_image"]
from .classifier import Classifier  # noqa: E402

__all__.append("Classifier")
