"""DeepLab v1 LargeFOV head (authors' Caffe `deeplab_largeFOV` prototxt).

Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and
Fully Connected CRFs", ICLR 2015, arXiv:1412.7062. pool5a (3x3/1 average pooling,
pad 1, Caffe counts the padding), fc6 3x3 dilation 12 with 1024 channels, fc7
1x1 1024, each with ReLU and dropout 0.5, then fc8 to the classes.
"""

import keras

from keras_deeplab.heads.common import logits_conv
from keras_deeplab.layers import Conv2D
from keras_deeplab.registry import Head, register_head


def fc_branch(x, num_classes, rate, suffix="", dropout=0.5, channels=1024):
    """fc6 (3x3, dilation `rate`) -> fc7 (1x1) -> fc8 logits, as the Caffe VGG heads."""
    x = Conv2D(
        channels, 3, padding="same", dilation_rate=rate, activation="relu", name=f"fc6{suffix}"
    )(x)
    x = keras.layers.Dropout(dropout, name=f"fc6{suffix}_dropout")(x)
    x = Conv2D(channels, 1, activation="relu", name=f"fc7{suffix}")(x)
    x = keras.layers.Dropout(dropout, name=f"fc7{suffix}_dropout")(x)
    return logits_conv(x, num_classes, name=f"fc8{suffix}")


def largefov(x, num_classes, dropout=0.5):
    """LargeFOV on the VGG-16 trunk output (pool5); returns logits at the trunk stride."""
    # Caffe AVE pooling with pad 1 divides by 9 everywhere: zero-pad, then VALID.
    x = keras.layers.ZeroPadding2D(1, name="pool5a_pad")(x)
    x = keras.layers.AveragePooling2D(3, strides=1, padding="valid", name="pool5a")(x)
    return fc_branch(x, num_classes, rate=12, dropout=dropout)


register_head(
    Head(
        "largefov",
        build=lambda x, features, args: largefov(x, args["num_classes"], dropout=args["dropout"]),
        options={"dropout": 0.5},
        description="DeepLab v1 LargeFOV: pool5a, fc6 (3x3, rate 12), fc7, fc8 logits",
    )
)
