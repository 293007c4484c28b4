"""Modified aligned Xception (Xception-41/65/71) backbone.

Follows the official DeepLab implementation, `tensorflow/models`
`research/deeplab/core/xception.py` (Chollet, "Xception: Deep Learning with
Depthwise Separable Convolutions", arXiv:1610.02357, as modified by Dai et al.
for COCO 2017 and by Chen et al., "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", arXiv:1802.02611):

* stem `entry_flow/conv1_1` (3x3, stride 2, fixed padding) and `conv1_2`,
* Xception modules of three split separable convs (depthwise -> BN ->
  pointwise -> BN); the stride sits on the third one, with fixed padding,
* ReLU on the *input* of each separable conv, except in `exit_flow/block2`
  where ReLU follows both BNs inside the separable conv,
* atrous rates from `StridePlanner` (official `stack_blocks_dense`), with
  `multi_grid` applied to the three convs of `exit_flow/block2`.

Layer names are the official TF-slim scopes without the `xception_<depth>/`
prefix, with "/" replaced by "_", so checkpoints map 1:1.
"""

import keras

from keras_deeplab.backbones.common import (
    Backbone,
    StridePlanner,
    batch_norm,
    check_input_shape,
    check_multi_grid,
    check_output_stride,
    register_family,
)
from keras_deeplab.layers import Conv2D, DepthwiseConv2D, conv2d_same, fixed_padding

# Official `xception_arg_scope` values (as passed by `feature_extractor.py`).
BN_MOMENTUM = 0.9997
BN_EPSILON = 1e-3
WEIGHTS_STDDEV = 0.09

VALID_DEPTHS = (41, 65, 71)

# (scope, depth_list, skip type, activation inside separable convs, units, stride).
_ENTRY_41_65 = [
    ("entry_flow/block1", (128, 128, 128), "conv", False, 1, 2),
    ("entry_flow/block2", (256, 256, 256), "conv", False, 1, 2),
    ("entry_flow/block3", (728, 728, 728), "conv", False, 1, 2),
]
_ENTRY_71 = [
    ("entry_flow/block1", (128, 128, 128), "conv", False, 1, 2),
    ("entry_flow/block2", (256, 256, 256), "conv", False, 1, 1),
    ("entry_flow/block3", (256, 256, 256), "conv", False, 1, 2),
    ("entry_flow/block4", (728, 728, 728), "conv", False, 1, 1),
    ("entry_flow/block5", (728, 728, 728), "conv", False, 1, 2),
]
_EXIT = [
    ("exit_flow/block1", (728, 1024, 1024), "conv", False, 1, 2),
    ("exit_flow/block2", (1536, 1536, 2048), "none", True, 1, 1),
]
# The block whose unit carries the multi-grid unit rates.
_MULTI_GRID_BLOCK = "exit_flow/block2"


def _middle(units):
    return [("middle_flow/block1", (728, 728, 728), "sum", False, units, 1)]


BLOCKS = {
    41: _ENTRY_41_65 + _middle(8) + _EXIT,
    65: _ENTRY_41_65 + _middle(16) + _EXIT,
    71: _ENTRY_71 + _middle(16) + _EXIT,
}

# Official `feature_extractor.networks_to_feature_maps` decoder end points:
# tap stride -> unit scope whose `separable_conv2_pointwise` (BN output) is tapped.
TAP_UNITS = {
    41: {
        4: "entry_flow/block2/unit_1",
        8: "entry_flow/block3/unit_1",
        16: "exit_flow/block1/unit_1",
    },
    65: {
        4: "entry_flow/block2/unit_1",
        8: "entry_flow/block3/unit_1",
        16: "exit_flow/block1/unit_1",
    },
    71: {
        4: "entry_flow/block3/unit_1",
        8: "entry_flow/block5/unit_1",
        16: "exit_flow/block1/unit_1",
    },
}


def _init():
    return keras.initializers.TruncatedNormal(stddev=WEIGHTS_STDDEV)


def _bn(x, name):
    return batch_norm(x, name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def _separable_conv(x, filters, stride, rate, activation_inside, name):
    """Official split `separable_conv2d_same`: depthwise (+BN) then pointwise (+BN).

    Returns the output of the pointwise BN (plus ReLU when `activation_inside`).
    """
    dw_name = f"{name}_depthwise"
    if stride == 1:
        padding = "same"
    else:
        x = fixed_padding(x, 3, rate, name=f"{dw_name}_pad")
        padding = "valid"
    x = DepthwiseConv2D(
        3,
        strides=stride,
        padding=padding,
        dilation_rate=rate,
        use_bias=False,
        depthwise_initializer=_init(),
        name=dw_name,
    )(x)
    x = _bn(x, f"{dw_name}_BatchNorm")
    if activation_inside:
        x = _relu(x, f"{dw_name}_relu")
    pw_name = f"{name}_pointwise"
    x = Conv2D(filters, 1, use_bias=False, kernel_initializer=_init(), name=pw_name)(x)
    x = _bn(x, f"{pw_name}_BatchNorm")
    if activation_inside:
        x = _relu(x, f"{pw_name}_relu")
    return x


def _xception_module(inputs, depths, skip, activation_inside, stride, rates, name):
    """Official `xception_module`. Returns `(output, separable_conv2 pointwise BN output)`."""
    x = inputs
    conv2_out = None
    for i in range(3):
        sep_name = f"{name}_separable_conv{i + 1}"
        if not activation_inside:
            x = _relu(x, f"{sep_name}_relu")
        x = _separable_conv(
            x,
            depths[i],
            stride=stride if i == 2 else 1,
            rate=rates[i],
            activation_inside=activation_inside,
            name=sep_name,
        )
        if i == 1:
            conv2_out = x
    if skip == "conv":
        shortcut = Conv2D(
            depths[-1],
            1,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=_init(),
            name=f"{name}_shortcut",
        )(inputs)
        shortcut = _bn(shortcut, f"{name}_shortcut_BatchNorm")
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    elif skip == "sum":
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x, conv2_out


@register_family("xception")
def _xception_graph(input_shape=(None, None, 3), output_stride=16, multi_grid=None, depth=65):
    """The xception graph: `(inputs, taps, default name)` (see `Backbone`)."""
    if depth not in VALID_DEPTHS:
        raise ValueError(
            f"Xception depth={depth!r} is not supported; allowed values: {list(VALID_DEPTHS)}."
        )
    check_output_stride(output_stride, backbone=f"xception_{depth}")
    input_shape = check_input_shape(input_shape)
    multi_grid = check_multi_grid(multi_grid)

    inputs = keras.Input(shape=input_shape, name="image")
    x = conv2d_same(inputs, 32, 3, stride=2, name="entry_flow_conv1_1", kernel_initializer=_init())
    x = _bn(x, "entry_flow_conv1_1_BatchNorm")
    x = _relu(x, "entry_flow_conv1_1_relu")
    x = conv2d_same(x, 64, 3, stride=1, name="entry_flow_conv1_2", kernel_initializer=_init())
    x = _bn(x, "entry_flow_conv1_2_BatchNorm")
    x = _relu(x, "entry_flow_conv1_2_relu")

    # The stem already applied stride 2 (official: `output_stride //= 2`).
    planner = StridePlanner(output_stride, current_stride=2)
    tap_of_unit = {unit: s for s, unit in TAP_UNITS[depth].items()}
    taps = {}
    for scope, depths, skip, activation_inside, num_units, block_stride in BLOCKS[depth]:
        unit_rates = multi_grid if scope == _MULTI_GRID_BLOCK else (1, 1, 1)
        for u in range(num_units):
            unit_scope = f"{scope}/unit_{u + 1}"
            unit_input_stride = planner.stride
            stride, rate = planner.next(block_stride)
            x, conv2_out = _xception_module(
                x,
                depths,
                skip,
                activation_inside,
                stride,
                rates=tuple(rate * r for r in unit_rates),
                name=f"{unit_scope}/xception_module".replace("/", "_"),
            )
            # separable_conv2 runs before the unit's stride: it is at the unit's input stride.
            tap_stride = tap_of_unit.get(unit_scope)
            if tap_stride is not None and tap_stride < output_stride:
                assert unit_input_stride == tap_stride, (unit_scope, unit_input_stride)
                taps[f"stride_{tap_stride}"] = conv2_out
    if planner.stride != output_stride:
        raise ValueError(f"output_stride {output_stride} cannot be reached by xception_{depth}.")
    taps["final"] = x
    return inputs, taps, f"xception_{depth}"


def XceptionBackbone(
    input_shape=(None, None, 3),
    output_stride=16,
    multi_grid=None,
    depth=65,
    name=None,
):
    """Modified aligned Xception backbone (official DeepLab `xception_{41,65,71}`).

    Args:
        input_shape: `(height, width, 3)`; height/width may be None.
        output_stride: 8, 16 or 32; stride of the `"final"` feature map.
        multi_grid: three unit rates for the convs of `exit_flow/block2`
            (default `(1, 1, 1)`; the official checkpoints use `(1, 2, 4)` at
            OS 8/16 when trained with it).
        depth: 41, 65 or 71.
        name: model name (default `"xception_<depth>"`).

    Returns:
        A `Backbone` (a `keras.Model`) taking images normalised to [-1, 1] and returning a
        dict with `"stride_4"` (pre-activation decoder tap, 256 channels),
        `"stride_8"` / `"stride_16"` when below `output_stride`, and `"final"`
        (2048 channels at `output_stride`).

    Example:
        >>> model = XceptionBackbone(output_stride=16, multi_grid=(1, 2, 4))
        >>> feats = model(np.zeros((1, 65, 65, 3), "float32"))
        >>> feats["final"].shape, feats["stride_4"].shape
        (TensorShape([1, 5, 5, 2048]), TensorShape([1, 17, 17, 256]))
    """
    return Backbone(
        "xception",
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        name=name,
        depth=depth,
    )
