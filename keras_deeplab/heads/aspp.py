"""DeepLab v3 Atrous Spatial Pyramid Pooling (official `model.py:extract_features`).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587. Branches are concatenated in the official order
`[image_pooling, aspp0, aspp1, aspp2, aspp3]`, projected to 256 channels (`filters`) with
BN + ReLU, then dropout (keep 0.9 in the official code).
"""

import keras

from keras_deeplab.heads.common import conv_bn_relu, split_separable_conv_bn_relu
from keras_deeplab.layers import ResizeBilinear
from keras_deeplab.registry import Head, register_head


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


DEFAULT_ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def resolve_rates(backbone, output_stride, atrous_rates=None):
    """Official defaults: [6, 12, 18] at OS16 (doubled at OS8), none for MobileNetV2."""
    if atrous_rates is None:
        if backbone.startswith("mobilenetv2"):
            return ()
        return DEFAULT_ATROUS_RATES[output_stride]
    rates = tuple(int(r) for r in atrous_rates)
    if len(rates) not in (0, 3) or any(r < 1 for r in rates):
        raise ValueError(
            f"atrous_rates for the DeepLab v3 ASPP must be 3 positive rates, e.g. (6, 12, 18) at "
            f"output_stride 16 or (12, 24, 36) at 8, or () for image pooling + 1x1 only; got {rates}."
        )
    return rates


register_head(
    Head(
        "aspp",
        build=lambda x, features, args: aspp(
            x,
            atrous_rates=args["atrous_rates"],
            separable=args["aspp_separable"],
            image_pooling=args["image_pooling"],
            filters=args["aspp_filters"],
            dropout=args["dropout"],
        ),
        options={
            "atrous_rates": None,
            "aspp_separable": True,
            "image_pooling": True,
            "aspp_filters": 256,
            "dropout": 0.1,
        },
        description="DeepLab v3 ASPP: image pooling + 1x1 + three atrous 3x3 branches, projected",
    )
)
