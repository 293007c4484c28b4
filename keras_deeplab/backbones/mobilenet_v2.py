"""MobileNetV2 backbone of DeepLab (Sandler et al., "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018, arXiv:1801.04381).

Follows the official TF-slim network as DeepLab builds it:
`tensorflow/models:research/slim/nets/mobilenet/mobilenet_v2.py` (`V2_DEF`),
`mobilenet.py` (`mobilenet_base`: output-stride rule, `_make_divisible`, `training_scope`),
`conv_blocks.py` (`expanded_conv`), called by
`research/deeplab/core/feature_extractor.py:_mobilenet_v2` up to `layer_18`
(`expanded_conv_16`, 320 * depth_multiplier channels).

Official details kept here:
* Channels: `_make_divisible(c * depth_multiplier, d, min_depth)` with `d = min_depth = 8`
  only when `depth_multiplier == 1.0`, else `d = min_depth = 1` (DeepLab's call; dm 0.5 gives
  Conv 16, expanded_conv project 8, expanded_conv_1 project 12, ...). Expansion sizes are
  `_make_divisible(in * 6, 8)`; the first block (factor 1) has no expand conv.
* Every conv / depthwise uses SAME padding (no fixed padding in MobileNetV2), no bias, BN
  (decay 0.997 from `training_scope`, slim's default epsilon 1e-3) and ReLU6, except the
  linear `project` conv. Residual add when the (actual) stride is 1 and channels match.
* Decoder taps (`DECODER_END_POINTS`): `layer_4/depthwise_output` (stride 4),
  `layer_7/depthwise_output` (8), `layer_14/depthwise_output` (16): the depthwise
  conv + BN + ReLU6 outputs of expanded_conv_2, _5 and _12.

Keras layer names are the slim scopes without `MobilenetV2/`, "/" -> "_" (e.g.
`expanded_conv_3_depthwise`, `expanded_conv_3_depthwise_BatchNorm`).
"""

import keras

from keras_deeplab.backbones.common import (
    Backbone,
    StridePlanner,
    batch_norm,
    check_input_shape,
    check_output_stride,
    register_family,
)
from keras_deeplab.layers import Conv2D, DepthwiseConv2D

BN_MOMENTUM = 0.997  # slim mobilenet.training_scope(bn_decay=0.997)
BN_EPSILON = 1e-3  # slim.batch_norm default (training_scope does not set it)
EXPANSION_FACTOR = 6

# V2_DEF spec after the stem conv (Conv 3x3 s2, 32 ch): (stride, num_outputs) of
# expanded_conv, expanded_conv_1, ..., expanded_conv_16 (= layer_2 ... layer_18).
BLOCKS = (
    (1, 16),
    (2, 24),
    (1, 24),
    (2, 32),
    (1, 32),
    (1, 32),
    (2, 64),
    (1, 64),
    (1, 64),
    (1, 64),
    (1, 96),
    (1, 96),
    (1, 96),
    (2, 160),
    (1, 160),
    (1, 160),
    (1, 320),
)
STEM_FILTERS = 32

# Official DECODER_END_POINTS: nominal stride -> `layer_N` whose depthwise output is tapped
# (layer_1 = Conv, layer_2 = expanded_conv, layer_N = expanded_conv_{N-2}).
DECODER_TAP_LAYERS = {4: 4, 8: 7, 16: 14}


def make_divisible(value, divisor, min_value=None):
    """Official `_make_divisible`: round to a multiple of `divisor`, never 10% below `value`."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def scaled_depth(num_outputs, depth_multiplier):
    """Channel count of a V2_DEF layer as DeepLab builds it (`min_depth = divisible_by`)."""
    divisor = 8 if depth_multiplier == 1.0 else 1
    return make_divisible(num_outputs * depth_multiplier, divisor, divisor)


def block_scope(index):
    """Slim scope of the `index`-th expanded_conv block (0 -> `expanded_conv`)."""
    return "expanded_conv" if index == 0 else f"expanded_conv_{index}"


def _bn_relu6(x, name, activation=True):
    x = batch_norm(x, f"{name}_BatchNorm", BN_MOMENTUM, BN_EPSILON)
    if activation:
        x = keras.layers.Activation("relu6", name=f"{name}_Relu6")(x)
    return x


def _conv_bn(x, filters, kernel_size, name, stride=1, rate=1, activation=True):
    x = Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="same",
        dilation_rate=rate,
        use_bias=False,
        name=name,
    )(x)
    return _bn_relu6(x, name, activation)


def _check_depth_multiplier(depth_multiplier):
    try:
        ok = float(depth_multiplier) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(depth_multiplier, bool):
        raise ValueError(
            "depth_multiplier must be a positive number (e.g. 1.0 or 0.5); "
            f"got {depth_multiplier!r}."
        )
    return float(depth_multiplier)


@register_family("mobilenetv2")
def _mobilenet_v2_graph(
    input_shape=(None, None, 3), output_stride=16, multi_grid=None, depth_multiplier=1.0
):
    """The mobilenetv2 graph: `(inputs, taps, default name)` (see `Backbone`)."""
    input_shape = check_input_shape(input_shape)
    check_output_stride(output_stride, backbone="MobileNetV2")
    if multi_grid is not None:
        raise ValueError(
            f"MobileNetV2 has no multi-grid units; multi_grid must be None, got {multi_grid!r}."
        )
    depth_multiplier = _check_depth_multiplier(depth_multiplier)
    name = "mobilenet_v2"
    if depth_multiplier != 1.0:
        name += "_dm" + f"{depth_multiplier:g}".replace(".", "")

    planner = StridePlanner(output_stride)
    tap_layers = {layer: stride for stride, layer in DECODER_TAP_LAYERS.items()}
    taps = {}

    inputs = keras.Input(shape=input_shape, name="input")
    stride, rate = planner.next(2)
    x = _conv_bn(inputs, scaled_depth(STEM_FILTERS, depth_multiplier), 3, "Conv", stride, rate)

    for index, (nominal_stride, num_outputs) in enumerate(BLOCKS):
        scope = block_scope(index)
        in_channels = x.shape[-1]
        out_channels = scaled_depth(num_outputs, depth_multiplier)
        if index == 0:  # expand_input(1, divisible_by=1)
            inner = make_divisible(in_channels, 1)
        else:
            inner = make_divisible(in_channels * EXPANSION_FACTOR, 8)
        stride, rate = planner.next(nominal_stride)

        block_input = x
        if inner > in_channels:
            x = _conv_bn(x, inner, 1, f"{scope}_expand")
        x = DepthwiseConv2D(
            3,
            strides=stride,
            padding="same",
            dilation_rate=rate,
            use_bias=False,
            name=f"{scope}_depthwise",
        )(x)
        x = _bn_relu6(x, f"{scope}_depthwise")
        tap_stride = tap_layers.get(index + 2)  # layer_N = block index + 2
        if tap_stride is not None and tap_stride < output_stride:
            assert planner.stride == tap_stride, (scope, planner.stride)
            taps[f"stride_{tap_stride}"] = x
        x = _conv_bn(x, out_channels, 1, f"{scope}_project", activation=False)
        if stride == 1 and out_channels == in_channels:
            x = keras.layers.Add(name=f"{scope}_add")([x, block_input])

    taps["final"] = x
    return inputs, taps, name


def MobileNetV2Backbone(
    input_shape=(None, None, 3),
    output_stride=16,
    multi_grid=None,
    depth_multiplier=1.0,
    name=None,
):
    """DeepLab's MobileNetV2 feature extractor (official slim V2_DEF up to `layer_18`).

    Args:
        input_shape: `(height, width, 3)`; height/width may be `None`. Images must already be
            scaled to [-1, 1] (see `keras_deeplab.layers.Preprocessing("symmetric")`).
        output_stride: 8, 16 or 32. Once reached, later depthwise convs run at stride 1 with
            atrous rates (official `mobilenet_base` rule, via `StridePlanner`).
        multi_grid: must be `None`; MobileNetV2 has no multi-grid units.
        depth_multiplier: channel multiplier (1.0 and 0.5 have official checkpoints).
        name: model name (default `mobilenet_v2` or e.g. `mobilenet_v2_dm05`).

    Returns:
        A `Backbone` (a `keras.Model`) with dict outputs `stride_4` (expanded_conv_2 depthwise output,
        144 ch at dm 1.0), `stride_8` (expanded_conv_5 depthwise output, output_stride > 8),
        `stride_16` (expanded_conv_12 depthwise output, output_stride 32) and `final`
        (expanded_conv_16 project output, 320 ch at dm 1.0).

    Example:
        >>> backbone = MobileNetV2Backbone((129, 129, 3), output_stride=8, depth_multiplier=0.5)
        >>> backbone.output["final"].shape
        (None, 17, 17, 160)
    """
    return Backbone(
        "mobilenetv2",
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        name=name,
        depth_multiplier=depth_multiplier,
    )
