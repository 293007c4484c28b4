"""Backbones: one module per family, one registry to build them by name.

`get_backbone(name)` returns a `Backbone` (see `backbones.common`); a new backbone is a
family module registering its graph (`@register_family`) plus a `BACKBONES` entry here.
"""

import keras

from keras_deeplab.backbones.common import (
    BACKBONE_FAMILIES,
    VALID_OUTPUT_STRIDES,
    Backbone,
    feature_info_of,
)
from keras_deeplab.backbones.mobilenet_v2 import MobileNetV2Backbone
from keras_deeplab.backbones.resnet import ResNetBackbone
from keras_deeplab.backbones.vgg import VGG16Backbone
from keras_deeplab.backbones.xception import XceptionBackbone

# name -> (family, fixed family options, preprocessing mode)
BACKBONES = {
    "xception41": ("xception", {"depth": 41}, "symmetric"),
    "xception65": ("xception", {"depth": 65}, "symmetric"),
    "xception71": ("xception", {"depth": 71}, "symmetric"),
    "resnet50": ("resnet", {"depth": 50, "flavour": "caffe"}, "caffe"),
    "resnet101": ("resnet", {"depth": 101, "flavour": "caffe"}, "caffe"),
    "resnet50_beta": ("resnet", {"depth": 50, "flavour": "beta"}, "symmetric"),
    "resnet101_beta": ("resnet", {"depth": 101, "flavour": "beta"}, "symmetric"),
    "resnet50_tv": ("resnet", {"depth": 50, "flavour": "torchvision"}, "torch"),
    "resnet101_tv": ("resnet", {"depth": 101, "flavour": "torchvision"}, "torch"),
    "resnet50_deep": ("resnet", {"depth": 50, "flavour": "deep"}, "torch"),
    "resnet101_deep": ("resnet", {"depth": 101, "flavour": "deep"}, "torch"),
    "resnet50_v1c": ("resnet", {"depth": 50, "flavour": "v1c"}, "torch"),
    "resnet101_v1c": ("resnet", {"depth": 101, "flavour": "v1c"}, "torch"),
    "mobilenetv2": ("mobilenetv2", {"depth_multiplier": 1.0}, "symmetric"),
    "mobilenetv2_dm05": ("mobilenetv2", {"depth_multiplier": 0.5}, "symmetric"),
    "vgg16": ("vgg16", {}, "caffe"),
}
ALIASES = {
    "xception": "xception65",
    "xception_65": "xception65",
    "xception_41": "xception41",
    "xception_71": "xception71",
    "resnet_v1_50_beta": "resnet50_beta",
    "resnet_v1_101_beta": "resnet101_beta",
    "resnet50_torchvision": "resnet50_tv",
    "resnet101_torchvision": "resnet101_tv",
    "resnet50_deep_stem": "resnet50_deep",
    "resnet101_deep_stem": "resnet101_deep",
    "mobilenet_v2": "mobilenetv2",
    "mobilenetv2_dm1": "mobilenetv2",
    "mobilenetv2_dm10": "mobilenetv2",
}


def list_backbones():
    """Names accepted by `get_backbone` (aliases excluded)."""
    return sorted(BACKBONES)


def resolve_backbone_name(name):
    """Canonical backbone name; a clear error listing the valid ones otherwise."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}. Valid backbones: {', '.join(list_backbones())} "
            f"(aliases: {', '.join(sorted(ALIASES))})."
        )
    return key


def preprocessing_mode(name):
    """Input convention of a backbone: "symmetric" ([-1, 1]), "caffe" (BGR mean) or "torch"
    (ImageNet mean/std on [0, 1] RGB)."""
    return BACKBONES[resolve_backbone_name(name)][2]


def get_backbone(
    backbone, input_shape=(None, None, 3), output_stride=16, multi_grid=None, **kwargs
):
    """Builds a `Backbone` by name (`list_backbones()`); see each family's module for arguments.

    Example:
        `features = get_backbone("xception65", output_stride=8)(images)["stride_4"]`
    """
    key = resolve_backbone_name(backbone)
    family, fixed, _ = BACKBONES[key]
    return Backbone(
        family,
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        **fixed,
        **kwargs,
    )


def backbone_graph(
    backbone, input_shape=(None, None, 3), output_stride=16, multi_grid=None, name=None
):
    """`(model, feature_info)`: a registered backbone as the plain functional model that
    `SegmentationModel`s nest (so weights files keep Keras' `layers/functional` layout), and
    its taps (see `Backbone.feature_info`).

    Example:
        `graph, info = backbone_graph("mobilenetv2", output_stride=8, name="mobilenetv2_backbone")`
    """
    family, fixed, _ = BACKBONES[resolve_backbone_name(backbone)]
    inputs, taps, default_name = BACKBONE_FAMILIES[family](
        input_shape=input_shape, output_stride=output_stride, multi_grid=multi_grid, **fixed
    )
    return keras.Model(inputs, taps, name=name or default_name), feature_info_of(
        taps, output_stride
    )


__all__ = [
    "BACKBONES",
    "VALID_OUTPUT_STRIDES",
    "Backbone",
    "MobileNetV2Backbone",
    "ResNetBackbone",
    "VGG16Backbone",
    "XceptionBackbone",
    "backbone_graph",
    "get_backbone",
    "list_backbones",
    "preprocessing_mode",
    "resolve_backbone_name",
]
