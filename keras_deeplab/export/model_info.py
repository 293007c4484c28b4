"""What the exporters need to know about a model: input size, class count, normalisation.

Example:

```python
from keras_deeplab.export.model_info import num_classes_of, model_preprocessing

num_classes_of(model)  # 21
model_preprocessing(model)  # "symmetric" when the model normalises RGB [0, 255] inside
```
"""

import keras

from keras_deeplab.msc import MultiScaleInputs


def inner_model(model):
    """The network a `MultiScaleInputs` wrapper runs at each scale; `model` otherwise."""
    return model.model if isinstance(model, MultiScaleInputs) else model


def model_preprocessing(model):
    """Mode of the model's own `preprocessing` layer ("symmetric"/"caffe"), or None."""
    try:
        layer = inner_model(model).get_layer("preprocessing")
    except ValueError:
        return None
    return getattr(layer, "mode", None)


def input_size_of(model):
    """`(H, W)` of the model's input; None for dynamic dimensions."""
    try:
        shape = inner_model(model).input_shape
    except (AttributeError, ValueError):
        return None, None
    return tuple(None if d is None else int(d) for d in shape[1:3])


def num_classes_of(model):
    """Channel count of the model's output."""
    h, w = input_size_of(model)
    return int(model.compute_output_shape((1, h or 33, w or 33, 3))[-1])


def output_activation(model):
    """None, "softmax" or "sigmoid": the activation the model applies to its logits."""
    if isinstance(model, MultiScaleInputs):
        return model.activation
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    if isinstance(last, keras.layers.Activation):
        name = keras.activations.serialize(last.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", "")
        return name if name in ("softmax", "sigmoid") else None
    return None


def backbone_preprocessing(model):
    """Normalisation of the model's backbone (from its `<backbone>_backbone` sub-model)."""
    from keras_deeplab.backbones import preprocessing_mode

    for layer in getattr(inner_model(model), "layers", []):
        if layer.name.endswith("_backbone"):
            try:
                return preprocessing_mode(layer.name[: -len("_backbone")])
            except (KeyError, ValueError):
                return None
    return None
