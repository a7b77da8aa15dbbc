"""edgetl's device runtime: numpy + Pillow + a TFLite interpreter, never TensorFlow."""
from .classifier import Classifier
from .errors import UserError
from .image import ImageError, load_image, open_image

__all__ = ["Classifier", "UserError", "ImageError", "load_image", "open_image"]
