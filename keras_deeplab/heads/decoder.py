"""DeepLab v3+ decoder (official `model.py:refine_by_decoder`).

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018, arXiv:1802.02611. The low-level tap is projected
to 48 channels, the encoder output is resized (align corners) to its size,
`[encoder, low_level]` are concatenated and refined by two 3x3 convs of 256.
"""

import keras

from keras_deeplab.heads.common import conv_bn_relu, split_separable_conv_bn_relu
from keras_deeplab.layers import ResizeBilinear
from keras_deeplab.registry import Head, register_head


def decoder(x, low_level, separable=True, filters=256, low_level_filters=48):
    """Refines encoder features `x` with the stride-4 `low_level` tap; returns features.

    Args:
        x: ASPP output.
        low_level: backbone stride-4 tap.
        separable: refinement convs as split separable convs (official default).
        filters: channels of the refinement convs.
        low_level_filters: channels of the low-level projection.
    """
    low = conv_bn_relu(low_level, low_level_filters, 1, name="decoder_feature_projection0")
    x = ResizeBilinear(name="decoder_resize")([x, low])
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    for i in range(2):
        name = f"decoder_decoder_conv{i}"
        if separable:
            x = split_separable_conv_bn_relu(x, filters, name=name)
        else:
            x = conv_bn_relu(x, filters, 3, name=name)
    return x


register_head(
    Head(
        "decoder",
        build=lambda x, features, args: decoder(
            x,
            features["stride_4"],
            separable=args["decoder_separable"],
            filters=args["decoder_filters"],
            low_level_filters=args["low_level_filters"],
        ),
        options={"decoder_separable": True, "decoder_filters": 256, "low_level_filters": 48},
        description="DeepLab v3+ decoder: encoder output refined with the stride-4 tap",
    )
)
