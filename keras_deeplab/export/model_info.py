"""What the exporters need to know about a model: normalisation, activation, classes, size.

A `keras_deeplab.SegmentationModel` says it itself (`preprocessing`, `backbone_name`,
`activation`, `num_classes`). Any other Keras model (a user's own) is taken as it is: its
output is logits unless the caller says otherwise (`outputs=`), it normalises its input
only if it has a `keras_deeplab.layers.Preprocessing` layer, and where an exporter needs a
fact it cannot know (the normalisation of a model without that layer) it asks for an
argument or raises a clear error.

Example:

```python
model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
model_preprocessing(model), output_activation(model), num_classes_of(model)
# ('symmetric', None, 3)
```
"""

from keras_deeplab import _compat
from keras_deeplab.backbones import preprocessing_mode
from keras_deeplab.layers import Preprocessing, ResizeBilinear
from keras_deeplab.msc import MultiScaleInputs
from keras_deeplab.registry import get_architecture
from keras_deeplab.segmentation_model import SegmentationModel

OUTPUT_KINDS = ("logits", "softmax", "sigmoid")


def inner_model(model):
    """The network a `MultiScaleInputs` model runs at each scale; `model` otherwise."""
    return model.model if isinstance(model, MultiScaleInputs) else model


def model_preprocessing(model):
    """The normalisation the model applies inside to RGB [0, 255] images (a mode of
    `keras_deeplab.layers.PREPROCESSING_MODES`), or None when it takes normalised input."""
    if isinstance(model, SegmentationModel):
        return model.preprocessing
    layers = getattr(model, "layers", [])
    return next((layer.mode for layer in layers if isinstance(layer, Preprocessing)), None)


def input_normalization(model):
    """The normalisation of the model's input convention, inside the model or not: its
    backbone's for a `SegmentationModel`, else `model_preprocessing`; None when unknown."""
    own = model_preprocessing(model)
    if own is not None or not isinstance(model, SegmentationModel):
        return own
    if model.backbone_name:
        return preprocessing_mode(model.backbone_name)
    return get_architecture(model.architecture).preprocessing


def output_activation(model, outputs=None):
    """None (logits), "softmax" or "sigmoid": what the model applies to its logits.

    A `SegmentationModel` says it (`model.activation`); for other models `outputs` does
    (`"logits"`, the default, `"softmax"` or `"sigmoid"`).
    """
    if outputs is not None and outputs not in OUTPUT_KINDS:
        raise ValueError(f"outputs must be one of {OUTPUT_KINDS} or None; got {outputs!r}.")
    told = None if outputs in (None, "logits") else outputs
    if not isinstance(model, SegmentationModel):
        return told
    if outputs is not None and told != model.activation:
        raise ValueError(
            f"Model {model.name!r} returns {model.activation or 'logits'} (its activation); "
            f"drop outputs={outputs!r}, which only describes models that are not "
            "keras_deeplab SegmentationModels."
        )
    return model.activation


def input_size_of(model):
    """`(H, W)` of the model's input; None for dynamic dimensions."""
    try:
        shape = inner_model(model).input_shape
    except (AttributeError, ValueError):
        return None, None
    return tuple(None if d is None else int(d) for d in shape[1:3])


def input_channels_of(model):
    """Channels of the model's input images (3 for RGB models, 1 for a grayscale U-Net)."""
    try:
        channels = inner_model(model).input_shape[-1]
    except (AttributeError, ValueError):
        return 3
    return int(channels or 3)


def num_classes_of(model):
    """The model's class count (its output channels for other models)."""
    if isinstance(model, SegmentationModel):
        return model.num_classes
    h, w = input_size_of(model)
    return int(model.compute_output_shape((1, h or 33, w or 33, 3))[-1])


def resize_conventions(model):
    """The bilinear conventions the model's `ResizeBilinear` layers use: `"align_corners"`
    (the official DeepLab / Caffe one) and/or `"half_pixel"` (torch's align_corners=False)."""
    return {
        "align_corners" if layer.align_corners else "half_pixel"
        for layer in _compat.all_layers(model)
        if isinstance(layer, ResizeBilinear)
    }


def aligned_stride(model):
    """The output stride of the `k * OS + 1` input grid the model's labels line up on, or None.

    Models with align-corners resizes (the official DeepLab, Caffe convention) and an
    `output_stride` are evaluated on inputs padded to `k * OS + 1` (`Segmenter`); the
    exporters pad or warn the same way. None for other models (half-pixel resizes, none).
    """
    stride = getattr(model, "output_stride", None)
    if not stride or "align_corners" not in resize_conventions(model):
        return None
    return int(stride)
