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
    if not isinstance(layer, COUNTED_LAYERS):
        return 0
    return sum(
        _call_macs(layer, inputs[0].shape, outputs[0].shape, depthwise_only)
        for inputs, outputs in _compat.layer_calls(layer, graph)
    )


def _call_macs(layer, in_shape, out_shape, depthwise_only=False):
    """Multiply-adds of one call of `layer` (one of `COUNTED_LAYERS`) from its shapes."""
    spatial = math.prod(out_shape[1:-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return spatial * math.prod(layer.kernel_size) * out_shape[-1]
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = spatial * math.prod(layer.kernel_size) * in_shape[-1] * layer.depth_multiplier
        if depthwise_only:
            return depthwise
        return depthwise + spatial * in_shape[-1] * layer.depth_multiplier * out_shape[-1]
    if depthwise_only:
        return 0
    if isinstance(layer, keras.layers.Conv2D):
        return spatial * math.prod(layer.kernel_size) * in_shape[-1] // layer.groups * out_shape[-1]
    return spatial * in_shape[-1] * out_shape[-1]  # Dense


def graph_takes_size(model, input_size):
    """Whether `model`'s own graph takes one image of `input_size` (height, width) as it is:
    a functional model with one input whose height and width are dynamic or that size."""
    if not _compat.is_functional(model) or len(model.inputs) != 1:
        return False
    dims = model.inputs[0].shape[1:3]
    return all(d in (None, s) for d, s in zip(dims, input_size, strict=True))


def symbolic_macs(model, input_size, depthwise_only=False):
    """Multiply-adds of a functional `model` for one image of `input_size` (height, width),
    from the static shapes of its own graph run on a symbolic input of that size: no layer is
    built again (`count_macs` of a SegmentationModel of dynamic input size).
    """
    inputs = keras.tree.flatten(model.input)
    if len(inputs) != 1:
        raise ValueError(
            f"symbolic_macs counts single-input models; {model.name} has {len(inputs)}."
        )
    image = keras.KerasTensor((1, *input_size, inputs[0].shape[-1]), dtype=inputs[0].dtype)
    total = 0

    def call(layer, *args, **kwargs):
        nonlocal total
        if _compat.is_functional(layer):  # nested models: their own graph, counted the same way
            return _compat.run_through_graph(layer, args, call)
        if isinstance(layer, keras.Model):
            raise TypeError(f"{layer.name}: a nested non-functional model cannot be counted")
        outputs = layer.compute_output_spec(*args, **kwargs)
        if isinstance(layer, COUNTED_LAYERS):
            total += _call_macs(layer, args[0].shape, outputs.shape, depthwise_only)
        return outputs

    _compat.run_through_graph(model, image, call)
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

    A functional model that takes that size (`graph_takes_size`) runs its own graph on a
    symbolic input of that size (`symbolic_macs`: nothing is built again, ~30x faster than
    a rebuild, same counts over every registered model); other models are rebuilt from their
    config at that fixed size (their weights are not touched). `depthwise_only`: count only
    the depthwise convolutions (the depthwise half of separable ones included).

    Example:
        >>> count_macs(keras_deeplab.create_model("deeplabv3_mobilenetv2"), (513, 513)) / 1e9
        2.74...
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    # keras_deeplab models (SegmentationModel, MultiScaleInputs) describe their own cost.
    if hasattr(model, "count_macs"):
        return model.count_macs((height, width), depthwise_only=depthwise_only)
    if graph_takes_size(model, (height, width)):
        return symbolic_macs(model, (height, width), depthwise_only)
    config = _fixed_size_config(model.get_config(), height, width)
    fixed = model.__class__.from_config(config)
    return graph_macs(fixed, depthwise_only)


def count_params(model):
    """`(total, trainable)` parameter counts (total includes BN moving statistics)."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return model.count_params(), trainable


__all__ = ["count_macs", "count_params", "graph_macs", "graph_takes_size", "symbolic_macs"]
