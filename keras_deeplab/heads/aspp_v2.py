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
from keras_deeplab.registry import Head, register_head

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


def resolve_rates(aspp="L", atrous_rates=None):
    """The four branch rates: `atrous_rates`, else the `aspp` preset (`"L"` or `"S"`)."""
    if atrous_rates is None:
        presets = {"L": ASPP_L, "S": ASPP_S}
        if str(aspp).upper() not in presets:
            raise ValueError(
                f"aspp must be 'L' (rates {ASPP_L}) or 'S' (rates {ASPP_S}); got {aspp!r}."
            )
        atrous_rates = presets[str(aspp).upper()]
    rates = tuple(int(r) for r in atrous_rates)
    if len(rates) != 4 or any(r < 1 for r in rates):
        raise ValueError(
            f"atrous_rates for the DeepLab v2 ASPP must be 4 positive rates, e.g. {ASPP_L} (ASPP-L) "
            f"or {ASPP_S} (ASPP-S); got {rates}."
        )
    return rates


register_head(
    Head(
        "aspp_v2",
        build=lambda x, features, args: aspp_v2(
            x,
            args["num_classes"],
            atrous_rates=args["atrous_rates"],
            vgg_branches=args["backbone"] == "vgg16",
            dropout=args["dropout"],
        ),
        options={"aspp": "L", "atrous_rates": None, "dropout": 0.5},
        description="DeepLab v2 ASPP-S/L: summed atrous classifiers (fc6-fc8 branches on VGG)",
    )
)
