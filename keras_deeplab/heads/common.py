"""Building blocks shared by the heads (official `model.py` hyper-parameters)."""

import keras

from keras_deeplab.layers import BatchNormalization, Conv2D, DepthwiseConv2D
from keras_deeplab.registry import Head, register_head

# ASPP, image pooling, concat projection and decoder BatchNorm (official model.py).
HEAD_BN_MOMENTUM = 0.9997
HEAD_BN_EPSILON = 1e-5


def conv_bn_relu(x, filters, kernel_size, name, rate=1):
    """Conv (no bias) + BN + ReLU, the official `slim.conv2d` with the head's BN."""
    x = Conv2D(filters, kernel_size, padding="same", dilation_rate=rate, use_bias=False, name=name)(
        x
    )
    x = BatchNormalization(
        momentum=HEAD_BN_MOMENTUM, epsilon=HEAD_BN_EPSILON, name=f"{name}_BatchNorm"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def split_separable_conv_bn_relu(x, filters, name, rate=1):
    """Official `split_separable_conv2d`: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    x = DepthwiseConv2D(
        3,
        padding="same",
        dilation_rate=rate,
        use_bias=False,
        depthwise_initializer=keras.initializers.TruncatedNormal(stddev=0.33),
        name=f"{name}_depthwise",
    )(x)
    x = BatchNormalization(
        momentum=HEAD_BN_MOMENTUM, epsilon=HEAD_BN_EPSILON, name=f"{name}_depthwise_BatchNorm"
    )(x)
    x = keras.layers.ReLU(name=f"{name}_depthwise_relu")(x)
    x = Conv2D(
        filters,
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.06),
        name=f"{name}_pointwise",
    )(x)
    x = BatchNormalization(
        momentum=HEAD_BN_MOMENTUM, epsilon=HEAD_BN_EPSILON, name=f"{name}_pointwise_BatchNorm"
    )(x)
    return keras.layers.ReLU(name=f"{name}_pointwise_relu")(x)


def logits_conv(x, num_classes, name="logits_semantic", kernel_size=1, rate=1):
    """Class logits: conv with bias, no BN (truncated normal 0.01 as the official logits)."""
    return Conv2D(
        num_classes,
        kernel_size,
        padding="same",
        dilation_rate=rate,
        use_bias=True,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name=name,
    )(x)


register_head(
    Head(
        "logits",
        build=lambda x, features, args: logits_conv(x, args["num_classes"]),
        description="1x1 conv with bias to the classes (`logits_semantic`)",
    )
)


# Taps a training-only classifier can supervise (deep supervision): head `"aux_<tap>"`.
AUX_TAPS = ("stride_4", "stride_8", "stride_16", "final")


def _tap_aux_head(tap):
    def build(x, features, args):
        if tap not in features:
            raise ValueError(
                f"aux_taps: backbone {args['backbone']!r} at output stride "
                f"{args['output_stride']} has no tap {tap!r} (it has {', '.join(features)})."
            )
        return logits_conv(features[tap], args["num_classes"], name=f"aux_{tap}_logits")

    return build


for _tap in AUX_TAPS:
    register_head(
        Head(
            f"aux_{_tap}",
            build=_tap_aux_head(_tap),
            description=f"training-only 1x1 classifier on the backbone's {_tap!r} tap",
            upsample_logits=False,  # its loss sees the labels at the tap's resolution
        )
    )
