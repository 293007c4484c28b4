"""The FCN head of torchvision's FCN-ResNet (`torchvision.models.segmentation.fcn.FCNHead`).

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038), as torchvision builds it on a dilated ResNet: a 3x3 conv to
`in_channels // 4` (no bias), BatchNorm (torch eps 1e-5), ReLU, dropout 0.1 and a 1x1
conv with bias to the classes.

* head `"fcn"`: on the backbone's final features (2048 -> 512 channels);
* head `"fcn_aux"`: the auxiliary head on the ResNet's third stage (torch's `layer3`,
  1024 -> 256 channels), a training-only output (`Architecture(auxiliary=...)`).

Layer names: `fcn_conv`, `fcn_bn`, `fcn_logits` (torch `classifier.0/1/4`) and
`aux_fcn_conv`, `aux_fcn_bn`, `aux_fcn_logits` (torch `aux_classifier.0/1/4`).

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("fcn_resnet50", num_classes=21)
    model.auxiliary_loss_weights  # {'aux': 0.5}
    ```
"""

import keras

from keras_deeplab.backbones.resnet import stage_features
from keras_deeplab.layers import BatchNormalization, Conv2D
from keras_deeplab.registry import Head, register_head

# torch BatchNorm2d defaults (eps 1e-5, momentum 0.1 = Keras momentum 0.9).
TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


def fcn_head(x, num_classes, dropout=0.1, prefix="fcn"):
    """torchvision `FCNHead(in_channels, num_classes)` on `x`: logits at `x`'s stride."""
    channels = int(x.shape[-1]) // 4
    x = Conv2D(channels, 3, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = BatchNormalization(**TORCH_BN, name=f"{prefix}_bn")(x)
    x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return Conv2D(num_classes, 1, use_bias=True, name=f"{prefix}_logits")(x)


def _aux_input(features, args):
    """The third ResNet stage (torch `layer3`) among the backbone taps."""
    return stage_features(features, args, 3, "The auxiliary FCN head")


register_head(
    Head(
        "fcn",
        build=lambda x, features, args: fcn_head(
            x, args["num_classes"], dropout=args["head_dropout"]
        ),
        options={"head_dropout": 0.1},
        description="torchvision FCNHead: 3x3 conv C/4 (no bias) + BN + ReLU + dropout + 1x1",
    )
)
register_head(
    Head(
        "fcn_aux",
        build=lambda x, features, args: fcn_head(
            _aux_input(features, args),
            args["num_classes"],
            dropout=args["head_dropout"],
            prefix="aux_fcn",
        ),
        options={"head_dropout": 0.1},
        description="torchvision auxiliary FCNHead on the ResNet's third stage (1024 -> 256)",
    )
)
