"""Multiply-add and parameter counters.

`count_macs` counts the multiply-adds of every convolution (regular,
depthwise, dilated) and dense layer for one image of a given size, as the
official model zoo reports "MAdds". Element-wise ops (BN, ReLU, adds,
resizes, pooling) are not counted. The README's model table is
`keras_deeplab.zoo` (`keras-deeplab table`).
"""

import math

import keras

from keras_deeplab import _compat

COUNTED_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def _fixed_size_config(config, height, width):
    """Copy of a functional config whose image inputs have a static size."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "batch_shape" and isinstance(value, (list, tuple)) and len(value) == 4:
                value = [1, height, width, value[3]]
            out[key] = _fixed_size_config(value, height, width)
        return out
    if isinstance(config, list):
        return [_fixed_size_config(v, height, width) for v in config]
    return config


def _layer_macs(layer, depthwise_only=False, graph=None):
    total = 0
    if not isinstance(layer, COUNTED_LAYERS):
        return total
    for inputs, outputs in _compat.layer_calls(layer, graph):
        out_shape = outputs[0].shape
        in_shape = inputs[0].shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += math.prod(out_shape[1:3]) * kh * kw * out_shape[-1]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            spatial = math.prod(out_shape[1:3])
            total += spatial * kh * kw * in_shape[-1] * layer.depth_multiplier
            if not depthwise_only:
                total += spatial * in_shape[-1] * layer.depth_multiplier * out_shape[-1]
        elif depthwise_only:
            continue
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            total += (
                math.prod(out_shape[1:3]) * kh * kw * in_shape[-1] // layer.groups * out_shape[-1]
            )
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1]
    return total


def graph_macs(model, depthwise_only=False):
    """Multiply-adds of every layer call in `model`'s graph (static shapes), nested models
    included (`depthwise_only`: those of the depthwise convolutions, separable ones' included)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += graph_macs(layer, depthwise_only)
        else:
            total += _layer_macs(layer, depthwise_only, graph=model)
    return total


def count_macs(model, input_size=(513, 513), depthwise_only=False):
    """Multiply-adds of `model` for one image of `input_size` (height, width).

    The model is rebuilt from its config at that fixed size (its own weights are
    not touched), so models with `None` height/width can be counted. `depthwise_only`:
    count only the depthwise convolutions (the depthwise half of separable ones included).

    Example:
        >>> count_macs(keras_deeplab.create_model("deeplabv3_mobilenetv2"), (513, 513)) / 1e9
        2.74...
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    # keras_deeplab models (SegmentationModel, MultiScaleInputs) describe their own cost.
    if hasattr(model, "count_macs"):
        return model.count_macs((height, width), depthwise_only=depthwise_only)
    config = _fixed_size_config(model.get_config(), height, width)
    fixed = model.__class__.from_config(config)
    return graph_macs(fixed, depthwise_only)


def count_params(model):
    """`(total, trainable)` parameter counts (total includes BN moving statistics)."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return model.count_params(), trainable


__all__ = ["count_macs", "count_params", "graph_macs"]
