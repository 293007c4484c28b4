"""DeepLab v2: atrous backbone + ASPP of summed atrous classifiers (+ optional MSC).

Chen et al., TPAMI 2017, arXiv:1606.00915.
"""

from keras_deeplab.heads import aspp_v2
from keras_deeplab.registry import Architecture, register_architecture, register_model


def _resolve(args):
    return {**args, "atrous_rates": aspp_v2.resolve_rates(args["aspp"], args["atrous_rates"])}


register_architecture(
    Architecture(
        name="deeplabv2",
        heads=lambda args: ("aspp_v2",),
        options={"aspp": "L", "atrous_rates": None, "multi_grid": None, "dropout": 0.5},
        default_backbone="resnet101",
        default_output_stride=8,
        resolve=_resolve,
        multi_scale=True,
        description="DeepLab v2 ASPP-S/L on an atrous backbone, optional multi-scale inputs",
    )
)

register_model("deeplabv2_vgg16_aspp_s", "deeplabv2", backbone="vgg16", aspp="S")
register_model("deeplabv2_vgg16_aspp_l", "deeplabv2", backbone="vgg16", aspp="L")
register_model("deeplabv2_resnet101_aspp_s", "deeplabv2", backbone="resnet101", aspp="S")
register_model("deeplabv2_resnet101_aspp_l", "deeplabv2", backbone="resnet101", aspp="L")
register_model(
    "deeplabv2_resnet101_aspp_l_msc", "deeplabv2", backbone="resnet101", aspp="L", multi_scale=True
)
register_model("deeplabv2_resnet50_aspp_l", "deeplabv2", backbone="resnet50", aspp="L")
