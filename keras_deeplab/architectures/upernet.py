"""UperNet on an undilated ResNet: PPM + FPN fused at stride 4.

Xiao, Liu, Zhou, Jiang, Sun, "Unified Perceptual Parsing for Scene Understanding",
ECCV 2018, arXiv:1807.10221. The head is `keras_deeplab.heads.upernet`; the backbone runs
at output stride 32 (the FPN takes the four stage outputs); the stride-4 logits are resized
to the input bilinearly with half-pixel centres (torch `align_corners=False`), as CSAIL's
and mmsegmentation's inference.

Named models (150 classes by default, ADE20K):

* `upernet_resnet50`, `upernet_resnet101`: CSAIL's released configuration
  (`config/ade20k-resnet{50,101}-upernet.yaml`: `arch_decoder: "upernet"`, which
  `ModelBuilder.build_decoder` builds with `fpn_dim=512`; PPM branches 512, PPM branch
  resized before its conv, no dropout, no auxiliary head) on the deep-stem ResNet.
* `upernet_lite_resnet50`: CSAIL's `upernet_lite` decoder (`fpn_dim=256`, the `UPerNet`
  class default).
* `upernet_resnet50_mmseg`: mmsegmentation's `upernet_r50` (channels 512, PPM conv before
  the resize, dropout 0.1, auxiliary FCN head on the stride-16 stage with loss weight 0.4:
  `aux_head=True`) on mmseg's ResNetV1c trunk (`resnet50_v1c`): 64,117,750 parameters
  without / 66,516,108 with the auxiliary head, as mmsegmentation counts them.

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("upernet_resnet50")  # 150 classes
    model.count_params()
    ```
"""

from keras_deeplab.heads import upernet  # noqa: F401 - registers the heads
from keras_deeplab.registry import Architecture, register_architecture, register_model

# ResNets whose stride_4/8/16/final taps are the four stage outputs (conv2_x .. conv5_x),
# and the MobileNetV2s (their DeepLab taps at strides 4, 8, 16 and 32) for compact models.
BACKBONES = (
    "resnet50_deep",
    "resnet101_deep",
    "resnet50_v1c",
    "resnet101_v1c",
    "resnet50_tv",
    "resnet101_tv",
    "resnet50",
    "resnet101",
    "mobilenetv2",
    "mobilenetv2_dm05",
)
AUX_LOSS_WEIGHT = 0.4


def _resolve(args):
    if args["output_stride"] != 32:
        raise ValueError(
            f"upernet runs its backbone undilated: output_stride must be 32 (the FPN takes "
            f"the stride 4, 8, 16 and 32 stage outputs); got {args['output_stride']!r}."
        )
    upernet.check_options(args)
    return {**args, "ppm_bins": tuple(args["ppm_bins"])}


def _auxiliary(args):
    return (("upernet_aux", AUX_LOSS_WEIGHT),) if args["aux_head"] else ()


register_architecture(
    Architecture(
        name="upernet",
        heads=lambda args: ("upernet",),
        options={**upernet.OPTIONS, "aux_head": False},
        default_backbone="resnet50_deep",
        default_output_stride=32,
        backbones=tuple(BACKBONES),
        resolve=_resolve,
        upsample="half_pixel",
        auxiliary=_auxiliary,
        description="UperNet: pyramid pooling + feature pyramid fused at stride 4",
    )
)

register_model("upernet_resnet50", "upernet", backbone="resnet50_deep", num_classes=150)
register_model("upernet_resnet101", "upernet", backbone="resnet101_deep", num_classes=150)
register_model(
    "upernet_lite_resnet50", "upernet", backbone="resnet50_deep", num_classes=150, fpn_dim=256
)
register_model(
    "upernet_resnet50_mmseg",
    "upernet",
    backbone="resnet50_v1c",
    num_classes=150,
    ppm_conv_first=True,
    dropout=0.1,
    aux_head=True,
)
