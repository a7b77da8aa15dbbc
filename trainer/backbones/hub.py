"""``hub:<handle-or-SavedModel-dir>``: a TF Hub image feature vector, used frozen."""
from __future__ import annotations

from pathlib import Path

from . import Backbone, BackboneError


def hub_backbone(handle: str) -> Backbone:
    """A TF Hub image feature vector (handle or local SavedModel dir), used frozen.

    hub.KerasLayer needs tf_keras and cannot sit in a Keras 3 model; Keras 3's TFSMLayer loads
    the SavedModel instead (frozen use only: fine-tuning through it fails with Adam). Hub image models take [0, 1] input.
    """
    def build(size: int, alpha: float, weights: str):
        import keras
        path = handle
        if not Path(handle).is_dir():
            try:
                import tensorflow_hub as hub
                path = hub.resolve(handle)
            except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
                raise BackboneError(f"hub:{handle}: could not be fetched ({e.__class__.__name__}); "
                                    "download it where there is internet and pass the local SavedModel folder") from None
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=False)
        except Exception as e:  # noqa: BLE001 - any failure here has one meaning for the user
            raise BackboneError(f"hub:{handle}: not a SavedModel feature vector ({str(e)[:120]})") from None
        inp = keras.Input((size, size, 3))
        out = layer(inp)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return keras.Model(inp, out, name="hub_feature_vector")

    return Backbone(name=f"hub:{handle}", family="hub", default_size=224, min_size=32, max_size=512,
                    preprocessing="unit", weights_source=f"TF Hub {handle}", feature_width=lambda a: -1,
                    build_base=build, notes="frozen only (fine-tuning a TFSMLayer is not supported)")
