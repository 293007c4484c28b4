"""DeepLab v1 LargeFOV: VGG-16 trunk at output stride 8 + the LargeFOV head.

Chen et al., ICLR 2015, arXiv:1412.7062 (the CRF is post-processing, not part of the model).
"""

from keras_deeplab.heads import largefov  # noqa: F401 - registers the head
from keras_deeplab.registry import Architecture, register_architecture, register_model

register_architecture(
    Architecture(
        name="deeplabv1",
        heads=lambda args: ("largefov",),
        options={"dropout": 0.5},
        default_backbone="vgg16",
        default_output_stride=8,
        backbones=("vgg16",),
        description="DeepLab v1 LargeFOV (VGG-16)",
    )
)

register_model("deeplabv1_vgg16_largefov", "deeplabv1", backbone="vgg16")
