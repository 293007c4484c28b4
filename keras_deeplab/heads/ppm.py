"""PSPNet's pyramid pooling module (head `"ppm"`) and its auxiliary head (`"psp_aux"`).

Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, arXiv:1612.01105; the official
Caffe deploy net `hszhao/PSPNet` `pspnet101_VOC2012_473.prototxt` and the PyTorch
reimplementation `hszhao/semseg` `model/pspnet.py`.

`"ppm"` on the backbone's final features `x` (C channels): for every bin count `n` of
`ppm_bins`, adaptive average pooling to `n x n` (torch's bin rule, any input size:
`keras_deeplab.pooling`), 1x1 conv to `ppm_channels` (default C / 4, no bias) + BN + ReLU,
bilinear upsampling back to `x`'s size (align corners as Caffe's `Interp` and semseg;
`ppm_align_corners=False` for CSAIL / mmseg); concatenation `[x, branches in ppm_bins order]`;
3x3 conv to `ppm_filters` (512, no bias) + BN + ReLU, dropout `ppm_dropout` (0.1, channel-wise
as semseg's `Dropout2d`), 1x1 classifier with bias.

Concatenation order: the default `ppm_bins=(6, 3, 2, 1)` gives the Caffe net's
`[conv5_3, pool6, pool3, pool2, pool1]`; semseg, CSAIL (`mit_semseg` `PPM`) and mmseg
concatenate `[x, 1, 2, 3, 6]`, i.e. `ppm_bins=(1, 2, 3, 6)`. The order changes only which
input channels of the 3x3 conv see which branch (weights converted from one layout need the
matching order); the parameter count is the same.

`"psp_aux"`: semseg's auxiliary head on ResNet stage 3 (`layer3`, 1024 channels): 3x3 conv to
`aux_filters` (256, no bias) + BN + ReLU, dropout `aux_dropout` (0.1), 1x1 classifier.
"""

import keras

from keras_deeplab.backbones.resnet import TORCH_BN, stage_features
from keras_deeplab.heads.common import logits_conv
from keras_deeplab.layers import BatchNormalization, Conv2D, ResizeBilinear
from keras_deeplab.pooling import AdaptiveAveragePooling2D
from keras_deeplab.registry import Head, register_head

PPM_OPTIONS = {
    "ppm_bins": (6, 3, 2, 1),
    "ppm_channels": None,
    "ppm_filters": 512,
    "ppm_dropout": 0.1,
    "ppm_align_corners": True,
}
AUX_OPTIONS = {"aux_filters": 256, "aux_dropout": 0.1}


def conv_bn_relu(x, filters, kernel_size, name):
    """torch `Conv2d(bias=False)` + `BatchNorm2d` (eps 1e-5) + ReLU: `<name>_conv`, `_bn`, `_relu`."""
    x = Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn", **TORCH_BN)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _dropout(x, rate, name):
    return keras.layers.SpatialDropout2D(rate, name=name)(x) if rate else x


def check_bins_fit(bins, height, width, what="ppm_bins"):
    """A clear error when a bin count exceeds a static feature map side (None sides pass)."""
    sides = [s for s in (height, width) if s is not None]
    if sides and max(bins) > min(sides):
        raise ValueError(
            f"{what}={tuple(bins)}: {max(bins)} bins do not fit the {height}x{width} feature "
            f"map; every bin count must be <= the feature map's height and width. Use a "
            f"larger input, smaller bins, or input_shape=(None, None, 3) (any size, torch's "
            f"adaptive-pooling rule)."
        )


def pyramid_pooling(x, bins, channels, align_corners=True, name="ppm"):
    """`[x, branch(n) for n in bins]` concatenated: the pyramid pooling module.

    Example:
        >>> y = pyramid_pooling(keras.Input((60, 60, 2048)), (6, 3, 2, 1), 512)
        >>> y.shape  # (None, 60, 60, 4096)
    """
    check_bins_fit(bins, x.shape[1], x.shape[2])
    branches = [x]
    for n in bins:
        y = AdaptiveAveragePooling2D(n, name=f"{name}_pool{n}")(x)
        y = conv_bn_relu(y, channels, 1, f"{name}_bin{n}")
        y = ResizeBilinear(align_corners=align_corners, name=f"{name}_bin{n}_upsample")([y, x])
        branches.append(y)
    return keras.layers.Concatenate(name=f"{name}_concat")(branches)


def ppm_head(x, features, args):
    """Head `"ppm"`: pyramid pooling, 3x3 conv-BN-ReLU, dropout, class logits."""
    channels = args["ppm_channels"] or x.shape[-1] // 4
    y = pyramid_pooling(x, args["ppm_bins"], channels, args["ppm_align_corners"])
    y = conv_bn_relu(y, args["ppm_filters"], 3, "psp_bottleneck")
    y = _dropout(y, args["ppm_dropout"], "psp_dropout")
    return logits_conv(y, args["num_classes"], name="psp_logits")


def aux_head(x, features, args):
    """Head `"psp_aux"`: semseg's auxiliary classifier on the ResNet's stage-3 output."""
    y = conv_bn_relu(stage_features(features, args, 3, "psp_aux"), args["aux_filters"], 3, "aux")
    y = _dropout(y, args["aux_dropout"], "aux_dropout")
    return logits_conv(y, args["num_classes"], name="aux_logits")


register_head(
    Head(
        "ppm",
        build=ppm_head,
        options=PPM_OPTIONS,
        description="PSPNet pyramid pooling (adaptive bins) + 3x3 conv + dropout + logits",
    )
)
register_head(
    Head(
        "psp_aux",
        build=aux_head,
        options=AUX_OPTIONS,
        description="PSPNet auxiliary head on ResNet stage 3 (3x3 conv + dropout + logits)",
    )
)
