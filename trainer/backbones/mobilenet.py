"""MobileNetV2 and MobileNetV3 (Small, Large) from keras.applications: the phone-sized families."""
from __future__ import annotations

from . import Backbone, keras_app_builder, register


def _mnv2_width(alpha: float) -> int:
    """Keras' rule: the last layer keeps 1280 channels below width 1.0 and scales above it."""
    return 1280 if alpha <= 1.0 else int(1280 * alpha)


register(Backbone(
    name="mobilenet_v2", family="mobilenet_v2", default_size=224, min_size=32, max_size=224,
    preprocessing="minus1to1", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), default_alpha=1.0,
    weights_source="keras.applications (ImageNet, ~/.keras/models); local .h5 via --weights",
    feature_width=_mnv2_width, build_base=keras_app_builder("MobileNetV2", "mobilenet_v2"),
    taps=("block_15_add", "block_12_add"),   # the ends of the 7x7 (160-wide) and 14x14 (96-wide) stages
    build_classifier=keras_app_builder("MobileNetV2", "mobilenet_v2", top=True)))
for variant, ctor, width in (("small", "MobileNetV3Small", 576), ("large", "MobileNetV3Large", 960)):
    register(Backbone(
        name=f"mobilenet_v3_{variant}", family="mobilenet_v3", default_size=224, min_size=32,
        max_size=224, preprocessing="internal", alphas=(0.75, 1.0), default_alpha=1.0,
        weights_source="keras.applications (ImageNet)",
        feature_width=lambda a, w=width: w,
        notes="int8 HARD_SWISH is not delegated to XNNPACK: int8 can be slower than fp32",
        build_base=keras_app_builder(ctor, f"mobilenet_v3_{variant}", minimalistic=False,
                                     include_preprocessing=True),
        build_classifier=keras_app_builder(ctor, f"mobilenet_v3_{variant}", top=True, minimalistic=False,
                                           include_preprocessing=True)))
