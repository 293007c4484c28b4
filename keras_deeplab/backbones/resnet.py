"""ResNet-v1 backbones with atrous output-stride control, in two layouts.

* `flavour="beta"`: DeepLab v3/v3+ ResNet-v1 "beta" of the official TF code,
  `tensorflow/models:research/deeplab/core/resnet_v1_beta.py` (3x3 stem, stride
  on the 3x3 conv of the *last* unit of blocks 1-3, multi-grid block4), with
  layer names from the slim scopes (`block1_unit_1_bottleneck_v1_conv1`,
  `..._conv1_BatchNorm`) and decoder taps from `core/feature_extractor.py`.
  He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385;
  Chen et al., "Rethinking Atrous Convolution", arXiv:1706.05587.
* `flavour="caffe"`: the MSRA/Caffe ResNet of DeepLab v2 (7x7 stem, stride on
  the *first* 1x1 conv of the first unit of a stage), laid out exactly as
  `keras.applications.ResNet50/101` (same layer names and weight shapes) so
  their ImageNet weights load by name. Chen et al., "DeepLab: Semantic Image
  Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
  Connected CRFs", arXiv:1606.00915.
* `flavour="torchvision"`: `torchvision.models.resnet50/101` (7x7 stem, stride on
  the 3x3 conv, strided 1x1 projection; `replace_stride_with_dilation`: the first
  block of a dilated stage keeps the previous dilation). Layer names mirror the
  torch state-dict keys (`layer3_0_conv2`, `layer3_0_downsample_0`, `bn1`), so a
  torch checkpoint maps by name.
* `flavour="deep"`: the PSPNet / CSAIL trunk (`hszhao/semseg` `model/resnet.py`
  `deep_base=True`, `mit_semseg` resnet): stem 3x3/2 64, 3x3 64, 3x3 128, then the
  torchvision bottlenecks; in a dilated stage *every* block's 3x3 conv is dilated
  (semseg's PSPNet sets conv2 dilation 2 in all of layer3 and 4 in all of layer4).
  Zhao et al., "Pyramid Scene Parsing Network", arXiv:1612.01105.
* `flavour="v1c"`: mmsegmentation's `ResNetV1c` (the mmseg UperNet/PSPNet trunk): the deep
  stem at widths 32-32-64, otherwise as `"deep"` (ResNet-50: 23,527,264 parameters, the
  64-64-128 stem's 23,631,808 less 104,544).
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
from keras_deeplab.layers import Conv2D, conv2d_same

UNITS_PER_BLOCK = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASE_DEPTHS = (64, 128, 256, 512)
FLAVOURS = ("beta", "caffe", "torchvision", "deep", "v1c")

# Official ResNet BN (decay 0.95, eps 1e-5, `core/feature_extractor.py`) and
# the keras.applications defaults used by the Caffe layout.
BETA_BN = {"momentum": 0.95, "epsilon": 1e-5}
CAFFE_BN = {"momentum": 0.99, "epsilon": 1.001e-5}
# torch's BatchNorm2d: eps 1e-5, momentum 0.1 (Keras momentum = 1 - torch momentum).
TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _conv_bn(x, filters, kernel_size, name, stride=1, rate=1, relu=True):
    """Official `conv2d_same` + BN (+ ReLU), named `<name>`, `<name>_BatchNorm`."""
    x = conv2d_same(x, filters, kernel_size, stride=stride, rate=rate, name=name)
    x = batch_norm(x, f"{name}_BatchNorm", **BETA_BN)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _beta_bottleneck(x, depth, depth_bottleneck, stride, rate, name):
    """Official `bottleneck` (v1, post-activation). Returns `(output, conv3 BN output)`."""
    if x.shape[-1] == depth:
        # `resnet_utils.subsample`: identity, or a 1x1 max-pool with the stride.
        if stride == 1:
            shortcut = x
        else:
            shortcut = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_shortcut")(x)
    else:
        shortcut = Conv2D(depth, 1, strides=stride, use_bias=False, name=f"{name}_shortcut")(x)
        shortcut = batch_norm(shortcut, f"{name}_shortcut_BatchNorm", **BETA_BN)
    residual = _conv_bn(x, depth_bottleneck, 1, f"{name}_conv1")
    residual = _conv_bn(residual, depth_bottleneck, 3, f"{name}_conv2", stride=stride, rate=rate)
    conv3 = _conv_bn(residual, depth, 1, f"{name}_conv3", relu=False)
    out = keras.layers.Add(name=f"{name}_add")([shortcut, conv3])
    return keras.layers.ReLU(name=name)(out), conv3


def _build_beta(inputs, depth, output_stride, multi_grid):
    x = _conv_bn(inputs, 64, 3, "conv1_1", stride=2)
    x = _conv_bn(x, 64, 3, "conv1_2")
    x = _conv_bn(x, 128, 3, "conv1_3")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)

    planner = StridePlanner(output_stride, current_stride=4)
    taps = {}
    for b, (units, base) in enumerate(zip(UNITS_PER_BLOCK[depth], BASE_DEPTHS, strict=True)):
        for u in range(units):
            if b < 3:
                # Blocks 1-3: stride 2 on the last unit only.
                nominal, unit_rate = (2 if u == units - 1 else 1), 1
            else:
                nominal, unit_rate = 1, multi_grid[u]
            stride, rate = planner.next(nominal)
            name = f"block{b + 1}_unit_{u + 1}_bottleneck_v1"
            x, conv3 = _beta_bottleneck(x, 4 * base, base, stride, rate * unit_rate, name)
            # Official decoder end points: conv3 (pre-add, pre-ReLU) of the unit
            # before the strided one in blocks 1-3 (feature_extractor.py).
            tap_stride = 4 * 2**b
            if b < 3 and u == units - 2 and tap_stride < output_stride:
                taps[f"stride_{tap_stride}"] = conv3
    taps["final"] = x
    return taps


def _caffe_unit(x, filters, stride, rate, conv_shortcut, name):
    """keras.applications `residual_block_v1`, plus a dilation rate on the 3x3 conv."""
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(shortcut, f"{name}_0_bn", **CAFFE_BN)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = batch_norm(x, f"{name}_1_bn", **CAFFE_BN)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = Conv2D(filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv")(x)
    x = batch_norm(x, f"{name}_2_bn", **CAFFE_BN)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = batch_norm(x, f"{name}_3_bn", **CAFFE_BN)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _build_caffe(inputs, depth, output_stride, multi_grid):
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = batch_norm(x, "conv1_bn", **CAFFE_BN)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    planner = StridePlanner(output_stride, current_stride=4)
    taps = {}
    for s, (units, base) in enumerate(zip(UNITS_PER_BLOCK[depth], BASE_DEPTHS, strict=True)):
        for u in range(units):
            stride, _ = planner.next(2 if s > 0 and u == 0 else 1)
            # The stride sits on the first 1x1 conv, i.e. *before* this unit's
            # 3x3, so the 3x3 already runs at the rate after the removed stride
            # (DeepLab v2: every conv4 3x3 at rate 2, every conv5 3x3 at 4).
            rate = planner.rate * (multi_grid[u] if s == 3 else 1)
            name = f"conv{s + 2}_block{u + 1}"
            x = _caffe_unit(x, base, stride, rate, u == 0, name)
        tap_stride = 4 * 2**s
        if s < 3 and tap_stride < output_stride:
            taps[f"stride_{tap_stride}"] = x
    taps["final"] = x
    return taps


def _torch_conv_bn(x, filters, kernel_size, conv_name, bn_name, stride=1, rate=1, relu=True):
    """torch `Conv2d(padding=rate * (k // 2), bias=False)` + `BatchNorm2d` (+ ReLU): symmetric
    zero padding, so strided convs see the same pixels as in torch."""
    x = conv2d_same(x, filters, kernel_size, stride=stride, rate=rate, name=conv_name)
    x = batch_norm(x, bn_name, **TORCH_BN)
    if relu:
        x = keras.layers.ReLU(name=f"{conv_name}_relu")(x)
    return x


def _torch_bottleneck(x, planes, stride, rate, name):
    """torchvision `Bottleneck` (v1.5: stride on the 3x3 conv), named as its state dict."""
    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * planes:
        shortcut = Conv2D(
            4 * planes, 1, strides=stride, use_bias=False, name=f"{name}_downsample_0"
        )(x)
        shortcut = batch_norm(shortcut, f"{name}_downsample_1", **TORCH_BN)
    y = _torch_conv_bn(x, planes, 1, f"{name}_conv1", f"{name}_bn1")
    y = _torch_conv_bn(y, planes, 3, f"{name}_conv2", f"{name}_bn2", stride=stride, rate=rate)
    y = _torch_conv_bn(y, 4 * planes, 1, f"{name}_conv3", f"{name}_bn3", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=name)(y)


def stage_tap(stage, output_stride):
    """Name of the tap holding ResNet stage `stage`'s output (torch's `layer{stage}`, 1-3)
    in the `"torchvision"` / `"deep"` layouts: `"stride_{s}"` when the stage runs below the
    output stride, else `"layer{stage}_stride_{output_stride}"` (a dilated stage).

    Example:
        >>> stage_tap(3, 8), stage_tap(3, 32)
        ('layer3_stride_8', 'stride_16')
    """
    stride = 2 ** (stage + 1)
    return f"stride_{stride}" if stride < output_stride else f"layer{stage}_stride_{output_stride}"


def stage_features(features, args, stage, head):
    """The output of ResNet stage `stage` among a backbone's taps (for auxiliary heads);
    one clear error naming `head` and the taps when the backbone has no such tap."""
    tap = stage_tap(stage, args["output_stride"])
    if tap not in features:
        raise ValueError(
            f"{head} needs the ResNet's stage-{stage} output (tap {tap!r}); backbone "
            f"{args['backbone']!r} has taps {sorted(features)}. Use a torchvision-layout or "
            "deep-stem ResNet (resnet*_tv, resnet*_deep) or aux_head=False."
        )
    return features[tap]


# Widths of the three 3x3 stem convs of the deep-stem flavours.
DEEP_STEMS = {"deep": (64, 64, 128), "v1c": (32, 32, 64)}


def _build_torch(inputs, depth, output_stride, multi_grid, flavour):
    deep_stem = flavour in DEEP_STEMS
    if deep_stem:
        first, second, third = DEEP_STEMS[flavour]
        x = _torch_conv_bn(inputs, first, 3, "conv1", "bn1", stride=2)
        x = _torch_conv_bn(x, second, 3, "conv2", "bn2")
        x = _torch_conv_bn(x, third, 3, "conv3", "bn3")
    else:
        x = _torch_conv_bn(inputs, 64, 7, "conv1", "bn1", stride=2)
    # torch MaxPool2d(3, 2, padding=1); zero padding is exact after the ReLU.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)

    planner = StridePlanner(output_stride, current_stride=4)
    taps = {}
    for s, (units, planes) in enumerate(zip(UNITS_PER_BLOCK[depth], BASE_DEPTHS, strict=True)):
        for u in range(units):
            stride, previous_rate = planner.next(2 if s > 0 and u == 0 else 1)
            # torchvision's replace_stride_with_dilation: the first block of a dilated
            # stage keeps the previous dilation; semseg/CSAIL-PSPNet and mmseg's ResNetV1c:
            # every block dilated.
            rate = previous_rate if (u == 0 and not deep_stem) else planner.rate
            if s == 3:
                rate *= multi_grid[u]
            x = _torch_bottleneck(x, planes, stride, rate, f"layer{s + 1}_{u}")
        if s < 3:
            taps[stage_tap(s + 1, output_stride)] = x
    taps["final"] = x
    return taps


@register_family("resnet")
def _resnet_graph(
    input_shape=(None, None, 3), output_stride=16, multi_grid=None, depth=50, flavour="beta"
):
    """The resnet graph: `(inputs, taps, default name)` (see `Backbone`)."""
    if depth not in UNITS_PER_BLOCK:
        raise ValueError(f"ResNet depth={depth!r} is not supported; allowed values: [50, 101].")
    if flavour not in FLAVOURS:
        raise ValueError(f"ResNet flavour={flavour!r} is not supported; allowed: {list(FLAVOURS)}.")
    input_shape = check_input_shape(input_shape)
    check_output_stride(output_stride, backbone=f"resnet{depth}")
    multi_grid = check_multi_grid(multi_grid)

    inputs = keras.Input(shape=input_shape, name="images")
    if flavour in ("torchvision", *DEEP_STEMS):
        taps = _build_torch(inputs, depth, output_stride, multi_grid, flavour)
        suffix = "_tv" if flavour == "torchvision" else f"_{flavour}"
        return inputs, taps, f"resnet{depth}{suffix}"
    build = _build_beta if flavour == "beta" else _build_caffe
    taps = build(inputs, depth, output_stride, multi_grid)
    return inputs, taps, f"resnet{depth}_beta" if flavour == "beta" else f"resnet{depth}"


def ResNetBackbone(
    input_shape=(None, None, 3),
    output_stride=16,
    multi_grid=None,
    depth=50,
    flavour="beta",
    name=None,
):
    """ResNet-v1 50/101 feature extractor with atrous output-stride control.

    `"beta"` follows the official DeepLab `resnet_v1_{50,101}_beta`: stem of
    three 3x3 convs (`conv1_1..3`) + 3x3/2 max-pool, slim bottlenecks with the
    stride on the last unit of blocks 1-3, BN decay 0.95 / eps 1e-5, and
    block4 unit rates `rate * multi_grid[i]` (use `(1, 2, 4)` with the official
    checkpoints). Taps: `stride_4` is `block1_unit_2_bottleneck_v1_conv3_BatchNorm`
    (pre-add, pre-ReLU, the official decoder end point); `stride_8` / `stride_16`
    are the matching `block2_unit_3` / `block3_unit_{5,22}` conv3 outputs.

    `"caffe"` is the DeepLab v2 / keras.applications layout (layer names such
    as `conv4_block1_1_conv`; convs with bias, BN eps 1.001e-5): its weights
    are interchangeable by name with `keras.applications.ResNet50/101`
    (`include_top=False`). When a stage's stride is removed, all of its 3x3
    convs use the new rate; `multi_grid` multiplies the conv5 rates. Taps:
    the last unit outputs (`convN_blockK_out`) of conv2 (`stride_4`, there is
    no official decoder tap for this layout), conv3 and conv4.

    `"torchvision"` (`resnet50_tv`) and `"deep"` (`resnet50_deep`, the PSPNet/CSAIL
    64-64-128 stem) are the torch layouts: bias-free convs, BN eps 1e-5, stride on the
    3x3 conv, layer names as the torch state dict (`conv1`, `bn1`, `layer2_0_conv2`,
    `layer2_0_downsample_0`); dilation as torchvision's `replace_stride_with_dilation`
    (first block of a dilated stage at the previous rate) or, for `"deep"`, every block
    at the new rate (semseg's PSPNet). Taps: every stage output, `"stride_4"`,
    `"stride_8"`, `"stride_16"` below `output_stride` and `"layer{N}_stride_{output_stride}"`
    for a dilated stage N (e.g. `"layer3_stride_8"`, PSPNet's auxiliary tap; see
    `stage_tap`).

    `"stride_8"` / `"stride_16"` are present only when below `output_stride`.

    Args:
        input_shape: `(height, width, 3)`; height/width may be None.
        output_stride: 8, 16 or 32 (stride of `"final"`, 2048 channels).
        multi_grid: three block4/conv5 unit-rate multipliers (default `(1, 1, 1)`).
        depth: 50 or 101.
        flavour: `"beta"`, `"caffe"`, `"torchvision"`, `"deep"` or `"v1c"`.
        name: model name (default `resnet{depth}_beta` / `resnet{depth}`).

    Returns:
        A `Backbone` (a `keras.Model`) mapping normalised images to a dict of feature taps.

    Example:
        >>> model = ResNetBackbone(depth=101, output_stride=8, multi_grid=(1, 2, 4))
        >>> model(images)["final"].shape  # (batch, ceil(h / 8), ceil(w / 8), 2048)
    """
    return Backbone(
        "resnet",
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        name=name,
        depth=depth,
        flavour=flavour,
    )
