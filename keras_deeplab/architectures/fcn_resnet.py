"""FCN-ResNet50/101 as torchvision builds them (`torchvision.models.segmentation.fcn_resnet*`).

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038); torchvision's variant, not the paper's skip net: a
torchvision-layout ResNet (7x7 stem, stride on the 3x3 conv, `replace_stride_with_dilation
=[False, True, True]`: output stride 8), the FCN head (`keras_deeplab.heads.fcn`) on its
final features, bilinear resize to the input with `align_corners=False` (half-pixel), and
optionally the auxiliary FCN head on `layer3` (`aux_head=True`, the named models' default),
weighted 0.5 in the loss as torchvision's `references/segmentation/train.py`
(`losses["out"] + 0.5 * losses["aux"]`). Input: RGB in [0, 255], normalised inside with
the ImageNet mean/std on [0, 1] (`"torch"`).

Counts (21 classes): fcn_resnet50 35,322,218 learnable with aux (32,957,013 without);
fcn_resnet101 54,314,346 (51,949,141): torchvision's `num_params`.

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("fcn_resnet50", num_classes=21)
    logits = model(images)  # [batch, H, W, 21]; model(images, training=True) adds "aux"
    ```
"""

from keras_deeplab.heads import fcn  # noqa: F401 - registers the heads "fcn" and "fcn_aux"
from keras_deeplab.registry import Architecture, register_architecture, register_model

# torchvision references/segmentation/train.py: losses["out"] + 0.5 * losses["aux"].
AUX_LOSS_WEIGHT = 0.5


def _resolve(args):
    dropout = args["head_dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(
            f"head_dropout must be a number in [0, 1) (0.1 in torchvision); got {dropout!r}."
        )
    return {**args, "head_dropout": float(dropout)}


register_architecture(
    Architecture(
        name="fcn_resnet",
        heads=lambda args: ("fcn",),
        options={"aux_head": False, "head_dropout": 0.1},
        default_backbone="resnet50_tv",
        default_output_stride=8,
        # The torchvision ResNets, and MobileNetV2 to compare heads on one trunk (issue 19).
        backbones=("resnet50_tv", "resnet101_tv", "mobilenetv2", "mobilenetv2_dm05"),
        resolve=_resolve,
        upsample="half_pixel",
        auxiliary=lambda args: (("fcn_aux", AUX_LOSS_WEIGHT),) if args["aux_head"] else (),
        description="FCN head on a dilated torchvision ResNet (torchvision fcn_resnet*)",
    )
)

register_model("fcn_resnet50", "fcn_resnet", backbone="resnet50_tv", aux_head=True)
register_model("fcn_resnet101", "fcn_resnet", backbone="resnet101_tv", aux_head=True)
