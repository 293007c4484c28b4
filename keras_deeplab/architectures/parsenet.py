"""ParseNet: DeepLab-LargeFOV with L2-normalised global context fused before the classifier.

Liu, Rabinovich & Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop,
arXiv:1506.04579. On VOC the paper's baseline is DeepLab-LargeFOV (VGG-16, fc6 3x3 rate 12
-> 1024, fc7 1x1 -> 1024); ParseNet normalises fc7, adds its unpooled normalised global
average and classifies the 2048 channels (`parsenet_vgg16_largefov`, 20,528,981 parameters
at 21 classes). The global context also works on the other backbones without the LargeFOV
layers (`largefov=False`, e.g. `parsenet_mobilenetv2`).

Example:
    ```python
    model = keras_deeplab.create_model("parsenet_vgg16_largefov")
    model = keras_deeplab.create_model(
        "parsenet_vgg16_largefov", backbone="resnet50", output_stride=16, largefov=False
    )
    ```
"""

from keras_deeplab.heads import common, parsenet  # noqa: F401 - registers the heads
from keras_deeplab.registry import Architecture, register_architecture, register_model


def _resolve(args):
    scale = args["context_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(
            f"context_scale (ParseNet's initial L2-norm scale) must be a positive number, "
            f"e.g. 10.0; got {scale!r}."
        )
    if not isinstance(args["largefov"], bool):
        raise ValueError(
            "largefov must be True (the LargeFOV fc6/fc7 layers before the context, as the "
            f"paper on VGG-16) or False (context on the backbone features); got "
            f"{args['largefov']!r}."
        )
    dropout = args["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), e.g. 0.5; got {dropout!r}.")
    return {**args, "context_scale": float(scale), "dropout": float(dropout)}


register_architecture(
    Architecture(
        name="parsenet",
        heads=lambda args: (
            ("parsenet_fc", "global_context", "logits")
            if args["largefov"]
            else ("global_context", "logits")
        ),
        options={"largefov": True, "dropout": 0.5, "context_scale": parsenet.DEFAULT_CONTEXT_SCALE},
        default_backbone="vgg16",
        default_output_stride=8,
        resolve=_resolve,
        description="ParseNet: L2-normalised global context, early fusion (LargeFOV)",
    )
)

register_model("parsenet_vgg16_largefov", "parsenet", backbone="vgg16")
register_model(
    "parsenet_mobilenetv2", "parsenet", backbone="mobilenetv2", output_stride=16, largefov=False
)
