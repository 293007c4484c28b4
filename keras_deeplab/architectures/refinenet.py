"""RefineNet-4 on ResNet-50/101: multi-path refinement from stride 32 down to stride 4.

Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution
Semantic Segmentation", CVPR 2017, arXiv:1611.06612. The graph of the released network
as its PyTorch port (`DrSleep/refinenet-pytorch`, pip `refinenet`): torchvision-layout
ResNet (`resnet50_tv` / `resnet101_tv`, undilated, output stride 32), the cascade of
`keras_deeplab.heads.refinenet`, logits at stride 4 resized to the input (bilinear,
align corners, as the port).

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("refinenet_resnet101", num_classes=21)
    model.count_params()  # 118,157,781 (118,052,437 trainable, as the torch port)
    ```
"""

from keras_deeplab.heads import refinenet  # noqa: F401 - registers the head
from keras_deeplab.registry import Architecture, register_architecture, register_model

# ResNets whose stride_4/8/16/final taps are the four stage outputs (conv2_x .. conv5_x),
# and the MobileNetV2s (their DeepLab taps at strides 4, 8, 16 and 32).
BACKBONES = (
    "resnet50_tv",
    "resnet101_tv",
    "resnet50",
    "resnet101",
    "resnet50_deep",
    "resnet101_deep",
    "mobilenetv2",
    "mobilenetv2_dm05",
)


def _resolve(args):
    if args["output_stride"] != 32:
        raise ValueError(
            f"refinenet runs its backbone undilated: output_stride must be 32 (the four "
            f"RefineNet paths take the stride 32, 16, 8 and 4 stage outputs); got "
            f"{args['output_stride']!r}."
        )
    refinenet.check_options(args)
    return args


register_architecture(
    Architecture(
        name="refinenet",
        heads=lambda args: ("refinenet",),
        options=dict(refinenet.OPTIONS),
        default_backbone="resnet101_tv",
        default_output_stride=32,
        backbones=BACKBONES,
        resolve=_resolve,
        upsample="align_corners",
        description="RefineNet-4: multi-path refinement with chained residual pooling",
    )
)

register_model("refinenet_resnet50", "refinenet", backbone="resnet50_tv")
register_model("refinenet_resnet101", "refinenet", backbone="resnet101_tv")
