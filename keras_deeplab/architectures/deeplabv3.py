"""DeepLab v3: atrous backbone + ASPP with image pooling (or the cascade head).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587. Logits at `output_stride`, upsampled to the input.

`aux_head=True` (not in the paper; off by default) adds training-only 1x1 classifiers on the
backbone taps `aux_taps` (default the final one; heads `"aux_<tap>"`), each with the loss weight
`aux_loss_weight` (0.4 as PSPNet's): deep supervision, which speeds up training from random
initialisation (the demo recipe uses it). Inference and exports return the main logits only,
with the official network's weights.
"""

from keras_deeplab.heads import aspp, cascade, common  # noqa: F401 - registers the heads
from keras_deeplab.registry import Architecture, register_architecture, register_model

V3_HEADS = ("aspp", "cascade")


def default_multi_grid(backbone, multi_grid):
    """The official resnet_v1_*_beta checkpoints are trained with multi_grid (1, 2, 4)."""
    if multi_grid is None and backbone.endswith("_beta"):
        return (1, 2, 4)
    return None if multi_grid is None else tuple(multi_grid)


# The options of the training-only deep-supervision heads (v3 and v3+).
AUX_OPTIONS = {"aux_head": False, "aux_taps": ("final",), "aux_loss_weight": 0.4}


def auxiliary(args):
    """The training-only heads `aux_head` enables: `(("aux_<tap>", weight), ...)` or none."""
    if not args["aux_head"]:
        return ()
    return tuple((f"aux_{tap}", args["aux_loss_weight"]) for tap in args["aux_taps"])


def _check_aux(args):
    """`(aux_taps, aux_loss_weight)` checked and normalised (`aux_head` is checked for every
    architecture in `resolve_arguments`)."""
    weight = args["aux_loss_weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ValueError(f"aux_loss_weight must be a positive number (e.g. 0.4); got {weight!r}.")
    taps = args["aux_taps"]
    taps = (taps,) if isinstance(taps, str) else tuple(taps or ())
    if not taps or len(set(taps)) != len(taps) or not set(taps) <= set(common.AUX_TAPS):
        raise ValueError(
            f"aux_taps must be distinct backbone taps among {', '.join(common.AUX_TAPS)}; "
            f"got {args['aux_taps']!r}."
        )
    return taps, float(weight)


def resolve_encoder(args):
    """The v3 encoder's defaults (shared with v3+): multi-grid and ASPP rates; checks the
    auxiliary head's options."""
    backbone = args["backbone"]
    aux_taps, aux_loss_weight = _check_aux(args)
    return {
        **args,
        "aux_taps": aux_taps,
        "aux_loss_weight": aux_loss_weight,
        "multi_grid": default_multi_grid(backbone, args["multi_grid"]),
        "atrous_rates": aspp.resolve_rates(backbone, args["output_stride"], args["atrous_rates"]),
    }


def _resolve(args):
    if args["head"] not in V3_HEADS:
        raise ValueError(f"head must be 'aspp' or 'cascade'; got {args['head']!r}.")
    return resolve_encoder(args)


register_architecture(
    Architecture(
        name="deeplabv3",
        heads=lambda args: (args["head"], "logits"),
        options={
            "atrous_rates": None,
            "multi_grid": None,
            "head": "aspp",
            "aspp_separable": True,
            "image_pooling": True,
            "cascade_blocks": 3,
            "dropout": 0.1,
            **AUX_OPTIONS,
        },
        auxiliary=auxiliary,
        default_backbone="resnet101_beta",
        default_output_stride=16,
        resolve=_resolve,
        description="DeepLab v3: ASPP with image pooling (or cascaded blocks)",
    )
)

register_model("deeplabv3_resnet50_beta", "deeplabv3", backbone="resnet50_beta")
register_model("deeplabv3_resnet101_beta", "deeplabv3", backbone="resnet101_beta")
register_model(
    "deeplabv3_resnet101_beta_cascade", "deeplabv3", backbone="resnet101_beta", head="cascade"
)
register_model("deeplabv3_xception65", "deeplabv3", backbone="xception65")
register_model("deeplabv3_mobilenetv2", "deeplabv3", backbone="mobilenetv2")
register_model("deeplabv3_mobilenetv2_os8", "deeplabv3", backbone="mobilenetv2", output_stride=8)
register_model("deeplabv3_mobilenetv2_dm05", "deeplabv3", backbone="mobilenetv2_dm05")
register_model(
    "deeplabv3_mobilenetv2_dm05_os8", "deeplabv3", backbone="mobilenetv2_dm05", output_stride=8
)
