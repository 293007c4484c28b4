"""What an exported TFLite file computes: [preprocessing] -> model -> [argmax].

`ExportGraph` decides the file's input convention (RGB [0, 255] named `image`, or the
backbone's normalised input named `normalized_image`) and output (`logits`,
`probabilities` or a uint8 `class_map`), and computes the Keras reference for the same
inputs, which verification and diagnosis compare the file with.

Example:

```python
graph = ExportGraph(model, include_preprocessing=False, argmax=True)
x = graph.to_input(rgb_batch)  # normalised like the file's input
class_map = graph.reference(x)  # what the file must return
```
"""

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.export.model_info import (
    input_channels_of,
    input_normalization,
    model_preprocessing,
    num_classes_of,
    output_activation,
)
from keras_deeplab.layers import Preprocessing
from keras_deeplab.msc import MultiScaleInputs

RGB_INPUT, NORMALIZED_INPUT = "image", "normalized_image"


def strip_preprocessing(model):
    """The same model (shared layers and weights) without its `preprocessing` layer."""
    if isinstance(model, MultiScaleInputs):
        return MultiScaleInputs(
            strip_preprocessing(model.model), scales=model.scales, activation=model.activation
        )

    def call(layer, *args, **kwargs):
        if isinstance(layer, Preprocessing):
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


class ExportGraph:
    """The exported computation of `model`, in Keras / TF.

    Attributes: `core` (the network run, without its preprocessing layer when
    `include_preprocessing=False`), `prepend` (a `Preprocessing` layer added in front, or
    None), `mode` (the normalisation, None when unknown), `rgb_input`, `input_key`,
    `output_key`, `num_classes`, `channels` (of the input images), `argmax`.
    """

    def __init__(self, model, include_preprocessing=None, argmax=False):
        if include_preprocessing not in (None, True, False):
            raise ValueError(
                f"include_preprocessing must be None, True or False; got {include_preprocessing!r}."
            )
        own = model_preprocessing(model)
        self.mode = input_normalization(model)
        self.core, self.prepend = model, None
        if include_preprocessing is True and own is None:
            if self.mode is None:
                raise ValueError(
                    f"Model {model.name!r} does not normalise its input and is not a keras_deeplab "
                    "SegmentationModel with a backbone, so include_preprocessing=True cannot tell "
                    "its normalisation; add a keras_deeplab.layers.Preprocessing layer to it or "
                    "export with include_preprocessing=None."
                )
            self.prepend = Preprocessing(self.mode, name="preprocessing")
        elif include_preprocessing is False and own is not None:
            self.core = strip_preprocessing(model)
        self.rgb_input = own is not None if include_preprocessing is None else include_preprocessing
        self.num_classes = num_classes_of(model)
        self.channels = input_channels_of(model)
        self.argmax = bool(argmax)
        if self.argmax and self.num_classes > 256:
            raise ValueError(
                f"argmax=True writes a uint8 class map; {self.num_classes} classes do not fit."
            )
        self.input_key = RGB_INPUT if self.rgb_input else NORMALIZED_INPUT
        if self.argmax:
            self.output_key = "class_map"
        else:
            self.output_key = "probabilities" if output_activation(model) else "logits"

    def to_input(self, rgb):
        """RGB [0, 255] images -> the file's input convention."""
        rgb = np.asarray(rgb, np.float32)
        if self.rgb_input or self.mode is None:
            return rgb
        return np.asarray(Preprocessing(self.mode)(rgb), np.float32)

    def forward(self, x, network=None):
        """The file's computation on `x` (its input convention), through `network` or `core`."""
        if self.prepend is not None:
            x = self.prepend(x)
        network = self.core if network is None else network
        y = tf.cast(network(x, training=False), tf.float32)
        if self.argmax:
            return tf.cast(tf.argmax(y, axis=-1, output_type=tf.int32), tf.uint8)
        return y

    def reference(self, x):
        """Keras result for inputs in the file's convention: logits, or the class map."""
        return np.asarray(self.forward(tf.constant(x, tf.float32)))

    def describe_input(self):
        if self.rgb_input:
            return "RGB in [0, 255] (normalised inside the model)"
        if self.mode == "symmetric":
            return "(rgb - 127.5) / 127.5, RGB in [-1, 1]"
        if self.mode == "caffe":
            return "BGR with the ImageNet mean (103.939, 116.779, 123.68) subtracted"
        if self.mode == "torch":
            return "RGB / 255, minus (0.485, 0.456, 0.406), divided by (0.229, 0.224, 0.225)"
        if self.mode == "unit":
            return "x / 255, in [0, 1]"
        if self.mode == "bgr":
            return "BGR in [0, 255]"
        return "the model's own input convention"
