"""EfficientNet B0-B3 and EfficientNetV2-B0 from keras.applications (squeeze-excite, swish)."""
from __future__ import annotations

from . import Backbone, keras_app_builder, register

for i, (width, size) in enumerate(((1280, 224), (1280, 240), (1408, 260), (1536, 300))):
    register(Backbone(
        name=f"efficientnet_b{i}", family="efficientnet", default_size=size, min_size=32,
        max_size=600, preprocessing="internal", weights_source="keras.applications (ImageNet)",
        feature_width=lambda a, w=width: w,
        build_base=keras_app_builder(f"EfficientNetB{i}", f"efficientnet_b{i}"),
        build_classifier=keras_app_builder(f"EfficientNetB{i}", f"efficientnet_b{i}", top=True)))
register(Backbone(
    name="efficientnetv2_b0", family="efficientnetv2", default_size=224, min_size=32, max_size=480,
    preprocessing="internal", weights_source="keras.applications (ImageNet)",
    feature_width=lambda a: 1280,
    build_base=keras_app_builder("EfficientNetV2B0", "efficientnetv2_b0", include_preprocessing=True),
    build_classifier=keras_app_builder("EfficientNetV2B0", "efficientnetv2_b0", top=True,
                                       include_preprocessing=True)))
