"""RefineNet-4: the multi-path refinement cascade (head `"refinenet"`).

Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution
Semantic Segmentation", CVPR 2017, arXiv:1611.06612. Built as the released network
(`guosheng/refinenet` `gen_net_opts_model_type1.m`) in the layout of its PyTorch port
(`DrSleep/refinenet-pytorch`, pip `refinenet`), whose layer names these mirror
(`p_ims1d2_outl1_dimred`, `adapt_stage1_b_1_conv`, `mflow_conv_g1_pool_1_outvar_dimred`, ...).

Four RefineNet blocks run from the stride-32 backbone output down to stride 4:

* input adaptation: dropout (the stride-32 and stride-16 outputs only), a 3x3 conv
  without bias to 512 (deepest path) or 256 channels, two residual conv units (RCU:
  ReLU, 3x3 conv with bias, ReLU, 3x3 conv without bias, plus the input);
* multi-resolution fusion: each path's 3x3 conv (no bias) to 256, the coarser one
  resized (bilinear, align corners) to the finer one, summed, then ReLU;
* chained residual pooling: `crp_blocks` blocks of [5x5 stride-1 max pool, 3x3 conv]
  (`crp_order="pool_conv"`, the VOC release and the pip port) or [3x3 conv, 5x5 max
  pool] (`"conv_pool"`, the "improved residual pooling" of the later MATLAB models),
  each block's output added to the running sum;
* three output RCUs; after the last block dropout and a 3x3 classifier with bias, at
  stride 4.

`width` (256 released) sets the adaptation and fusion widths (the deepest path takes twice
it); narrower is not the authors' network, only a cheaper one for a CPU budget.
"""

import keras

from keras_deeplab.layers import Conv2D, ResizeBilinear
from keras_deeplab.registry import Head, register_head

CRP_ORDERS = ("pool_conv", "conv_pool")
# (backbone tap, width after input adaptation in units of `width`), deepest first: the
# released `input_adapt_dims = [512 256 256 256]` and fusion width 256 at width=256.
PATHS = (("final", 2), ("stride_16", 1), ("stride_8", 1), ("stride_4", 1))


# The PyTorch port's `nn.Conv2d` default (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
# Keras' glorot_uniform is 3x the variance; through the RCU and CRP sums that makes the
# initial logits large (std ~80 on unit-scale taps, ~650 on Google's MobileNetV2 taps)
# and SGD at LR 0.007 diverges.
TORCH_DEFAULT_INIT = {"scale": 1 / 3, "mode": "fan_in", "distribution": "uniform"}


def _conv3x3(x, filters, name, use_bias=False):
    init = keras.initializers.VarianceScaling(**TORCH_DEFAULT_INIT)
    return Conv2D(
        filters, 3, padding="same", use_bias=use_bias, kernel_initializer=init, name=name
    )(x)


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def residual_conv_units(x, count, name):
    """`count` RCUs: ReLU, 3x3 conv (bias), ReLU, 3x3 conv (no bias), plus the input."""
    filters = x.shape[-1]
    for i in range(1, count + 1):
        y = _relu(x, f"{name}_{i}_relu1")
        y = _conv3x3(y, filters, f"{name}_{i}_conv", use_bias=True)
        y = _relu(y, f"{name}_{i}_relu2")
        y = _conv3x3(y, filters, f"{name}_{i}_conv_relu_varout_dimred")
        x = keras.layers.Add(name=f"{name}_{i}_add")([y, x])
    return x


def chained_residual_pooling(x, blocks, name, order="pool_conv"):
    """Chained residual pooling on `x` (already ReLU'd): `blocks` pool/conv blocks, each
    output added to the sum."""
    filters = x.shape[-1]
    top = x
    for i in range(1, blocks + 1):
        pool = keras.layers.MaxPooling2D(5, strides=1, padding="same", name=f"{name}_{i}_pool")
        conv_name = f"{name}_{i}_outvar_dimred"
        if order == "pool_conv":
            top = _conv3x3(pool(top), filters, conv_name)
        else:
            top = pool(_conv3x3(top, filters, conv_name))
        x = keras.layers.Add(name=f"{name}_{i}_add")([top, x])
    return x


def refinenet(features, num_classes, dropout=0.5, crp_blocks=4, crp_order="pool_conv", width=256):
    """The RefineNet-4 cascade on `features` (taps `final`, `stride_16`, `stride_8`,
    `stride_4`); returns class logits at stride 4 (layer `clf_conv`)."""
    x = None
    for level, (tap, scale) in enumerate(PATHS, start=1):
        block = f"p_ims1d2_outl{level}"
        y = features[tap]
        if level <= 2 and dropout:  # the released net drops out the 2048/1024-wide taps
            y = keras.layers.Dropout(dropout, name=f"{block}_dropout")(y)
        y = _conv3x3(y, scale * width, f"{block}_dimred")
        y = residual_conv_units(y, 2, f"adapt_stage{level}_b")
        if x is None:
            y = _relu(y, f"mflow_conv_g{level}_relu")
        else:
            y = _conv3x3(y, width, f"adapt_stage{level}_b2_joint_varout_dimred")
            x = ResizeBilinear(name=f"mflow_conv_g{level - 1}_upsample")([x, y])
            y = keras.layers.Add(name=f"mflow_conv_g{level}_sum")([y, x])
            y = _relu(y, f"mflow_conv_g{level}_relu")
        y = chained_residual_pooling(y, crp_blocks, f"mflow_conv_g{level}_pool", crp_order)
        y = residual_conv_units(y, 3, f"mflow_conv_g{level}_b")
        if level < len(PATHS):
            y = _conv3x3(y, width, f"mflow_conv_g{level}_b3_joint_varout_dimred")
        x = y
    if dropout:
        x = keras.layers.Dropout(dropout, name="clf_dropout")(x)
    return _conv3x3(x, num_classes, "clf_conv", use_bias=True)


def check_options(args):
    """Raises a `ValueError` naming the option and what is allowed."""
    blocks = args["crp_blocks"]
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(
            f"crp_blocks must be a positive integer (4 as the released RefineNet, 2 as the "
            f"CVPR text); got {blocks!r}."
        )
    if args["crp_order"] not in CRP_ORDERS:
        raise ValueError(
            f"crp_order must be one of {CRP_ORDERS} ('pool_conv': the VOC release and the pip "
            f"port; 'conv_pool': the improved residual pooling); got {args['crp_order']!r}."
        )
    width = args["width"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer (256 released); got {width!r}.")
    rate = args["dropout"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"dropout must be a number in [0, 1) (0.5 released); got {rate!r}.")


def _missing_taps(features):
    return [tap for tap, _ in PATHS if tap not in features]


def _build(x, features, args):
    missing = _missing_taps(features)
    if missing:
        raise ValueError(
            f"refinenet needs the backbone taps at strides 32, 16, 8 and 4 ('final', "
            f"'stride_16', 'stride_8', 'stride_4'); this backbone has {sorted(features)} "
            f"(missing {missing}): use output_stride=32 and a ResNet backbone."
        )
    return refinenet(
        features,
        args["num_classes"],
        dropout=args["dropout"],
        crp_blocks=args["crp_blocks"],
        crp_order=args["crp_order"],
        width=args["width"],
    )


OPTIONS = {"dropout": 0.5, "crp_blocks": 4, "crp_order": "pool_conv", "width": 256}

register_head(
    Head(
        "refinenet",
        build=_build,
        options=OPTIONS,
        description="RefineNet-4 cascade (RCUs, fusion, chained residual pooling), logits at stride 4",
    )
)
