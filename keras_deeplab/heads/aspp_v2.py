"""DeepLab v2 ASPP: parallel atrous classifiers whose logits are summed.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI 2017, arXiv:1606.00915.
On VGG-16 each branch is fc6 (3x3 atrous, 1024) - fc7 (1x1, 1024) - fc8; on
ResNet each branch is one 3x3 atrous conv with bias straight to the classes
(`fc1_voc12_c0..c3` in the authors' prototxt). No BN, no projection.
"""

import keras

from keras_deeplab.heads.common import logits_conv
from keras_deeplab.heads.largefov import fc_branch

ASPP_S = (2, 4, 8, 12)
ASPP_L = (6, 12, 18, 24)


def aspp_v2(x, num_classes, atrous_rates=ASPP_L, vgg_branches=False, dropout=0.5):
    """Sums one classifier branch per rate; returns logits at the backbone stride.

    Args:
        x: backbone final feature map.
        num_classes: number of classes.
        atrous_rates: one rate per branch (ASPP-S (2, 4, 8, 12), ASPP-L (6, 12, 18, 24)).
        vgg_branches: fc6-fc7-fc8 branches (VGG-16) instead of one 3x3 conv (ResNet).
        dropout: dropout inside the VGG branches.
    """
    branches = []
    for i, rate in enumerate(atrous_rates):
        if vgg_branches:
            branches.append(fc_branch(x, num_classes, rate, suffix=f"_{i + 1}", dropout=dropout))
        else:
            name = "logits_semantic" if i == 0 else f"logits_semantic_{i}"
            branches.append(logits_conv(x, num_classes, name=name, kernel_size=3, rate=rate))
    return keras.layers.Add(name="aspp_v2_sum")(branches)
