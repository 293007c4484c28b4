"""DeepLab v3 Atrous Spatial Pyramid Pooling (official `model.py:extract_features`).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587. Branches are concatenated in the official order
`[image_pooling, aspp0, aspp1, aspp2, aspp3]`, projected to 256 channels with
BN + ReLU, then dropout (keep 0.9 in the official code).
"""

import keras

from keras_deeplab.heads.common import conv_bn_relu, split_separable_conv_bn_relu
from keras_deeplab.layers import ResizeBilinear


def aspp(
    x,
    atrous_rates=(6, 12, 18),
    separable=True,
    image_pooling=True,
    filters=256,
    dropout=0.1,
):
    """Applies ASPP to backbone features `x`; returns the projected features.

    Args:
        x: final backbone feature map.
        atrous_rates: rates of the 3x3 branches `aspp1..`; `()` gives the
            MobileNetV2 head (image pooling + 1x1 only).
        separable: 3x3 branches as split separable convs (BN + ReLU after
            depthwise and pointwise) instead of regular convs.
        image_pooling: add the image-level feature branch.
        filters: channels of every branch and of the projection.
        dropout: dropout rate after the projection (training only).
    """
    branches = []
    if image_pooling:
        pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling_mean")(x)
        pooled = conv_bn_relu(pooled, filters, 1, name="image_pooling")
        branches.append(ResizeBilinear(name="image_pooling_resize")([pooled, x]))
    branches.append(conv_bn_relu(x, filters, 1, name="aspp0"))
    for i, rate in enumerate(atrous_rates, start=1):
        if separable:
            branches.append(split_separable_conv_bn_relu(x, filters, name=f"aspp{i}", rate=rate))
        else:
            branches.append(conv_bn_relu(x, filters, 3, name=f"aspp{i}", rate=rate))
    if len(branches) > 1:
        x = keras.layers.Concatenate(name="aspp_concat")(branches)
    else:
        x = branches[0]
    x = conv_bn_relu(x, filters, 1, name="concat_projection")
    if dropout:
        x = keras.layers.Dropout(dropout, name="concat_projection_dropout")(x)
    return x
