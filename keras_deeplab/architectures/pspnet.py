"""PSPNet: a dilated ResNet (output stride 8) + the pyramid pooling module.

Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, arXiv:1612.01105. The trunk of
`pspnet50` / `pspnet101` is `resnet50_deep` / `resnet101_deep` (stem 3x3/2 64, 64, 128; stride
on the 3x3 conv; every 3x3 conv of stage 4 at dilation 2 and of stage 5 at 4, as the Caffe
deploy net and semseg); the head is `keras_deeplab.heads.ppm` (bins 1, 2, 3, 6 by torch's
adaptive rule, so any input size works and exports with dynamic height and width). The
auxiliary head (semseg: 3x3 256 on stage 4, loss weight 0.4) exists in training only:
`model(x, training=True)` returns `{"logits", "aux"}`, inference and exports the logits.
Logits at stride 8 are upsampled to the input size with align corners (Caffe `Interp`,
semseg). The PPM head also runs on the other backbones, e.g. `pspnet_mobilenetv2`.

Example:
    >>> model = keras_deeplab.create_model("pspnet50", num_classes=21)
    >>> model.auxiliary_loss_weights
    {'aux': 0.4}
"""

from keras_deeplab.backbones.common import check_output_stride
from keras_deeplab.heads import ppm
from keras_deeplab.registry import Architecture, register_architecture, register_model

# The backbones that expose ResNet stage 3 at every output stride (the auxiliary head's tap).
AUX_BACKBONES = ("resnet50_deep", "resnet101_deep", "resnet50_tv", "resnet101_tv")


def _positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


def _rate(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a dropout rate in [0, 1); got {value!r}.")
    return float(value)


def _resolve(args):
    bins = args["ppm_bins"]
    if isinstance(bins, int) or not bins or len(set(bins)) != len(bins):
        raise ValueError(
            f"ppm_bins must be distinct positive integers, in concatenation order "
            f"((6, 3, 2, 1): the Caffe PSPNet; (1, 2, 3, 6): semseg / CSAIL / mmseg); got {bins!r}."
        )
    bins = tuple(_positive_int(b, "every ppm_bins entry") for b in bins)
    if args["aux_head"] and args["backbone"] not in AUX_BACKBONES:
        raise ValueError(
            f"aux_head=True needs a backbone exposing ResNet stage 3 ({', '.join(AUX_BACKBONES)}); "
            f"got backbone {args['backbone']!r}: pass aux_head=False."
        )
    check_output_stride(args["output_stride"], backbone="pspnet")
    stride = args["output_stride"]
    height, width = args["input_shape"][:2]
    try:
        ppm.check_bins_fit(
            bins,
            None if height is None else -(-height // stride),
            None if width is None else -(-width // stride),
        )
    except ValueError as error:
        smallest = (max(bins) - 1) * stride + 1
        raise ValueError(
            f"{error} At output stride {stride} the input must be at least {smallest}x{smallest}."
        ) from None
    return {
        **args,
        "ppm_bins": bins,
        "ppm_channels": _positive_int(args["ppm_channels"], "ppm_channels", allow_none=True),
        "ppm_filters": _positive_int(args["ppm_filters"], "ppm_filters"),
        "ppm_dropout": _rate(args["ppm_dropout"], "ppm_dropout"),
        "ppm_align_corners": bool(args["ppm_align_corners"]),
        "aux_filters": _positive_int(args["aux_filters"], "aux_filters"),
        "aux_dropout": _rate(args["aux_dropout"], "aux_dropout"),
        "aux_loss_weight": float(args["aux_loss_weight"]),
    }


register_architecture(
    Architecture(
        name="pspnet",
        heads=lambda args: ("ppm",),
        auxiliary=lambda args: (("psp_aux", args["aux_loss_weight"]),) if args["aux_head"] else (),
        options={
            **ppm.PPM_OPTIONS,
            "aux_head": False,
            **ppm.AUX_OPTIONS,
            "aux_loss_weight": 0.4,
        },
        default_backbone="resnet50_deep",
        default_output_stride=8,
        resolve=_resolve,
        description="PSPNet: pyramid pooling (bins 1, 2, 3, 6) on a dilated ResNet",
    )
)

register_model("pspnet50", "pspnet", backbone="resnet50_deep", aux_head=True)
register_model("pspnet101", "pspnet", backbone="resnet101_deep", aux_head=True)
register_model("pspnet_mobilenetv2", "pspnet", backbone="mobilenetv2")
