"""DeepLab v3+: v3 encoder (ASPP) + decoder on the stride-4 low-level tap.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018, arXiv:1802.02611. `aux_head=True` adds the training-only
deep-supervision head of `keras_deeplab.architectures.deeplabv3` (not in the paper).
"""

from keras_deeplab.architectures.deeplabv3 import AUX_OPTIONS, auxiliary, resolve_encoder
from keras_deeplab.heads import aspp, common, decoder  # noqa: F401 - registers the heads
from keras_deeplab.registry import Architecture, register_architecture, register_model


def _resolve(args):
    filters = args["aspp_filters"]
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(
            f"aspp_filters must be a positive integer (official 256); got {filters!r}."
        )
    return resolve_encoder(args)


register_architecture(
    Architecture(
        name="deeplabv3plus",
        heads=lambda args: ("aspp", "decoder", "logits"),
        options={
            "atrous_rates": None,
            "multi_grid": None,
            "aspp_separable": True,
            "image_pooling": True,
            "aspp_filters": 256,
            "decoder_separable": True,
            "decoder_filters": 256,
            "low_level_filters": 48,
            "dropout": 0.1,
            **AUX_OPTIONS,
        },
        auxiliary=auxiliary,
        default_backbone="xception65",
        default_output_stride=16,
        resolve=_resolve,
        description="DeepLab v3+: ASPP encoder + decoder on the stride-4 tap",
    )
)

for _backbone in (
    "xception41",
    "xception65",
    "xception71",
    "resnet50_beta",
    "resnet101_beta",
    "resnet50",
    "resnet101",
    "mobilenetv2",
):
    register_model(f"deeplabv3plus_{_backbone}", "deeplabv3plus", backbone=_backbone)
