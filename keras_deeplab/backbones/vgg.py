"""The VGG-16 trunk of DeepLab v1 (LargeFOV) and DeepLab v2 (ASPP-L).

Follows the authors' Caffe prototxts (DeepLab v1
`exper/voc12/config/deeplab_largeFOV/train.prototxt`, DeepLab v2
`deeplabv2_vgg16/train.prototxt`): thirteen 3x3 convs with bias + ReLU, five
3x3 max-pools with pad 1, pool1-3 at stride 2, pool4 and pool5 at stride 1 and
conv5_1-3 at dilation 2 (output stride 8). The fc6/fc7 layers belong to the
heads. Conv layer names are those of `keras.applications.VGG16`, so its
ImageNet weights load by name.

Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully
Connected CRFs", arXiv:1412.7062; Simonyan & Zisserman, arXiv:1409.1556.
"""

import keras

from keras_deeplab.backbones.common import (
    Backbone,
    StridePlanner,
    check_input_shape,
    check_output_stride,
    register_family,
)
from keras_deeplab.layers import Conv2D

# (filters, number of 3x3 convs) of blocks 1-5; each block ends with a pool.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@register_family("vgg16")
def _vgg16_graph(input_shape=(None, None, 3), output_stride=8, multi_grid=None):
    """The vgg16 graph: `(inputs, taps, default name)` (see `Backbone`)."""
    if multi_grid is not None:
        raise ValueError(
            f"multi_grid is not supported by the VGG-16 backbone (it has no multi-grid block); "
            f"pass multi_grid=None, got {multi_grid!r}."
        )
    input_shape = check_input_shape(input_shape)
    check_output_stride(output_stride, backbone="vgg16")

    inputs = keras.Input(shape=input_shape, name="images")
    planner = StridePlanner(output_stride)
    rate = 1
    x = inputs
    taps = {}
    for b, (filters, convs) in enumerate(VGG16_BLOCKS):
        for c in range(convs):
            x = Conv2D(
                filters,
                3,
                padding="same",
                dilation_rate=rate,
                activation="relu",
                name=f"block{b + 1}_conv{c + 1}",
            )(x)
        stride, _ = planner.next(2)
        x = keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=f"pool{b + 1}")(x)
        # Convs after a removed stride run at the multiplied rate (pools stay 3x3, undilated).
        rate = planner.rate
        tap_stride = 2 ** (b + 1)
        if 4 <= tap_stride < output_stride:
            taps[f"stride_{tap_stride}"] = x
    taps["final"] = x
    return inputs, taps, "vgg16"


def VGG16Backbone(input_shape=(None, None, 3), output_stride=8, multi_grid=None, name=None):
    """DeepLab v1/v2 VGG-16 trunk (`block1_conv1` ... `block5_conv3`, `pool1` ... `pool5`).

    Pools are 3x3 max-pools with TF `"same"` padding: equal to Caffe's pad-1
    pooling on inputs of size `k * 8 + 1` (e.g. 321, 513); on other sizes the
    border differs by one row/column, as for every `"same"` vs explicit-pad
    choice. The five pools are the strided units of the official output-stride
    rule (`StridePlanner`): once `output_stride` is reached the remaining pools
    run at stride 1 and the convs after them at the multiplied rate. At the
    DeepLab setting `output_stride=8` this is exactly the Caffe net (pool4/pool5
    stride 1, conv5_x dilation 2).

    Taps: `stride_4` = `pool2`, `stride_8` = `pool3` (output_stride > 8),
    `stride_16` = `pool4` (output_stride 32), `final` = `pool5` (512 channels).

    Args:
        input_shape: `(height, width, 3)`; height/width may be None.
        output_stride: 8 (DeepLab), 16 or 32.
        multi_grid: not supported; must be None.
        name: model name (default `vgg16`).

    Returns:
        A `Backbone` (a `keras.Model`) mapping normalised (Caffe-style BGR, mean subtracted)
        images to a dict of feature taps.

    Example:
        >>> model = VGG16Backbone(input_shape=(321, 321, 3))
        >>> model(images)["final"].shape  # (batch, 41, 41, 512)
    """
    return Backbone(
        "vgg16",
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        name=name,
    )
