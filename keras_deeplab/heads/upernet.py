"""UperNet: pyramid pooling on the last stage + a feature pyramid fused at stride 4.

Xiao, Liu, Zhou, Jiang, Sun, "Unified Perceptual Parsing for Scene Understanding",
ECCV 2018, arXiv:1807.10221. Head `"upernet"` (logits at stride 4, layer
`upernet_logits`) and head `"upernet_aux"` (mmsegmentation's auxiliary FCN head on the
stride-16 stage, a training-only output).

The graph (CSAIL `mit_semseg.models.UPerNet`; mmsegmentation `UPerHead` is the same graph
with `ppm_conv_first=True` and dropout before the classifier):

* PPM on the stride-32 tap: for each bin count of `ppm_bins`, adaptive average pooling,
  then a 1x1 conv to `ppm_channels` (no bias) + BN + ReLU and a bilinear resize back to
  the tap's size; CSAIL resizes *before* the conv (`ppm_conv_first=False`), mmseg after.
  `[tap, branches...]` concatenated, 3x3 conv-BN-ReLU to `fpn_dim`: the top level P5.
* FPN: 1x1 conv-BN-ReLU laterals (`fpn_dim`) on the stride 16, 8, 4 taps; top-down, the
  running sum is resized to the next lateral's size and added; each sum gets a 3x3
  conv-BN-ReLU (P4, P3, P2). The top level has no extra conv.
* Fusion: P3..P5 resized to P2's size (stride 4), `[P2, P3, P4, P5]` concatenated, a 3x3
  conv-BN-ReLU to `fpn_dim`, [dropout], a 1x1 classifier with bias.

Every resize is bilinear with `align_corners=False` (half-pixel centres), as both
references. BatchNorm has torch's epsilon 1e-5 and momentum 0.1 (Keras 0.9).
"""

import keras

from keras_deeplab.layers import BatchNormalization, Conv2D, ResizeBilinear
from keras_deeplab.pooling import AdaptiveAveragePooling2D
from keras_deeplab.registry import Head, register_head

TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}
# Lateral taps, finest first, then the PPM input.
LATERAL_TAPS = ("stride_4", "stride_8", "stride_16")
TOP_TAP = "final"


def conv_bn_relu(x, filters, kernel_size, name):
    """Conv (no bias, `<name>_conv`) + BN (`<name>_bn`) + ReLU, torch's BN constants."""
    x = Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _resize(x, reference, name):
    return ResizeBilinear(align_corners=False, name=name)([x, reference])


def pyramid_pooling(x, bins, channels, out_channels, conv_first, name="upernet_ppm"):
    """UperNet's PPM on `x`: branches per bin count, concat with `x`, 3x3 fusion conv."""
    branches = [x]
    for i, size in enumerate(bins):
        y = AdaptiveAveragePooling2D(size, name=f"{name}_{i}_pool")(x)
        if conv_first:
            y = conv_bn_relu(y, channels, 1, f"{name}_{i}")
            y = _resize(y, x, f"{name}_{i}_resize")
        else:
            y = _resize(y, x, f"{name}_{i}_resize")
            y = conv_bn_relu(y, channels, 1, f"{name}_{i}")
        branches.append(y)
    y = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_relu(y, out_channels, 3, f"{name}_last")


def upernet(
    features,
    num_classes,
    fpn_dim=512,
    ppm_bins=(1, 2, 3, 6),
    ppm_channels=512,
    ppm_conv_first=False,
    dropout=0.0,
):
    """The UperNet head on `features` (`stride_4`, `stride_8`, `stride_16`, `final`):
    logits at stride 4."""
    f = pyramid_pooling(features[TOP_TAP], ppm_bins, ppm_channels, fpn_dim, ppm_conv_first)
    levels = [f]  # coarsest first
    for i in reversed(range(len(LATERAL_TAPS))):
        lateral = conv_bn_relu(features[LATERAL_TAPS[i]], fpn_dim, 1, f"upernet_fpn_in_{i}")
        f = _resize(f, lateral, f"upernet_topdown_{i}_resize")
        f = keras.layers.Add(name=f"upernet_topdown_{i}_add")([lateral, f])
        levels.append(conv_bn_relu(f, fpn_dim, 3, f"upernet_fpn_out_{i}"))
    levels.reverse()  # [P2, P3, P4, P5]
    fused = [levels[0]]
    for i, level in enumerate(levels[1:], start=1):
        fused.append(_resize(level, levels[0], f"upernet_fusion_{i}_resize"))
    x = keras.layers.Concatenate(name="upernet_fusion_concat")(fused)
    x = conv_bn_relu(x, fpn_dim, 3, "upernet_fusion")
    if dropout:
        x = keras.layers.Dropout(dropout, name="upernet_dropout")(x)
    return Conv2D(num_classes, 1, use_bias=True, name="upernet_logits")(x)


def fcn_aux(x, num_classes, filters=256, dropout=0.1, name="aux_fcn"):
    """mmsegmentation's `FCNHead` (one conv, no input concat) on the stride-16 tap:
    3x3 conv-BN-ReLU, dropout, 1x1 classifier with bias."""
    x = conv_bn_relu(x, filters, 3, f"{name}_0")
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return Conv2D(num_classes, 1, use_bias=True, name=f"{name}_logits")(x)


def check_options(args):
    """Raises a `ValueError` naming the option and what is allowed."""
    for key in ("fpn_dim", "ppm_channels"):
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}.")
    bins = args["ppm_bins"]
    if (
        not isinstance(bins, (list, tuple))
        or not bins
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins)
    ):
        raise ValueError(
            f"ppm_bins must be a non-empty list of positive integers (e.g. [1, 2, 3, 6]); "
            f"got {bins!r}."
        )
    rate = args["dropout"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"dropout must be a number in [0, 1); got {rate!r}.")
    if not isinstance(args["ppm_conv_first"], bool):
        raise ValueError(
            f"ppm_conv_first must be True (mmseg: pool, conv, resize) or False (CSAIL: pool, "
            f"resize, conv); got {args['ppm_conv_first']!r}."
        )


def _build(x, features, args):
    missing = [tap for tap in (*LATERAL_TAPS, TOP_TAP) if tap not in features]
    if missing:
        raise ValueError(
            f"upernet needs the backbone taps at strides 4, 8, 16 and 32 ('stride_4', "
            f"'stride_8', 'stride_16', 'final'); this backbone has {sorted(features)} "
            f"(missing {missing}): use output_stride=32 and a ResNet backbone."
        )
    return upernet(
        features,
        args["num_classes"],
        fpn_dim=args["fpn_dim"],
        ppm_bins=tuple(args["ppm_bins"]),
        ppm_channels=args["ppm_channels"],
        ppm_conv_first=args["ppm_conv_first"],
        dropout=args["dropout"],
    )


OPTIONS = {
    "fpn_dim": 512,
    "ppm_bins": (1, 2, 3, 6),
    "ppm_channels": 512,
    "ppm_conv_first": False,
    "dropout": 0.0,
}

register_head(
    Head(
        "upernet",
        build=_build,
        options=OPTIONS,
        description="UperNet: PPM + FPN fused at stride 4, logits at stride 4",
    )
)
register_head(
    Head(
        "upernet_aux",
        build=lambda x, features, args: fcn_aux(features["stride_16"], args["num_classes"]),
        description="auxiliary FCN head on the stride-16 tap (mmseg FCNHead, training only)",
    )
)
