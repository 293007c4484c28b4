"""Multiply-add counter and the model-zoo table.

`count_macs` counts the multiply-adds of every convolution (regular,
depthwise, dilated) and dense layer for one image of a given size, as the
official model zoo reports "MAdds". Element-wise ops (BN, ReLU, adds,
resizes, pooling) are not counted.

Run `python -m keras_deeplab.macs` to print the README's model table.
"""

import argparse
import inspect
import math

import keras

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


def _layer_macs(layer):
    total = 0
    if not isinstance(layer, COUNTED_LAYERS):
        return total
    for node in layer._inbound_nodes:
        out_shape = node.outputs[0].shape
        in_shape = node.arguments.keras_tensors[0].shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += math.prod(out_shape[1:3]) * kh * kw * out_shape[-1]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            spatial = math.prod(out_shape[1:3])
            total += spatial * kh * kw * in_shape[-1] * layer.depth_multiplier
            total += spatial * in_shape[-1] * layer.depth_multiplier * out_shape[-1]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            total += (
                math.prod(out_shape[1:3]) * kh * kw * in_shape[-1] // layer.groups * out_shape[-1]
            )
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1]
    return total


def _walk(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _walk(layer)
        else:
            total += _layer_macs(layer)
    return total


def count_macs(model, input_size=(513, 513)):
    """Multiply-adds of `model` for one image of `input_size` (height, width).

    The model is rebuilt from its config at that fixed size (its own weights are
    not touched), so models with `None` height/width can be counted.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    # Models that wrap others (e.g. MultiScaleInputs) describe their own cost.
    if hasattr(model, "count_macs"):
        return model.count_macs((height, width))
    config = _fixed_size_config(model.get_config(), height, width)
    fixed = model.__class__.from_config(config)
    return _walk(fixed)


def count_params(model):
    """`(total, trainable)` parameter counts (total includes BN moving statistics)."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return model.count_params(), trainable


def zoo_rows(names=None, input_size=513):
    """One dict per registered model: name, output stride, parameters, multiply-adds."""
    from keras_deeplab.models import create_model, list_models, model_config

    rows = []
    for name in names or list_models():
        _, config = model_config(name)
        model = create_model(name)
        total, trainable = count_params(model)
        rows.append(
            {
                "name": name,
                "output_stride": config.get("output_stride", _default_output_stride(name)),
                "params": total,
                "trainable_params": trainable,
                "gmacs": count_macs(model, (input_size, input_size)) / 1e9,
            }
        )
        keras.backend.clear_session()
    return rows


def _default_output_stride(name):
    from keras_deeplab.models import model_config

    builder, _ = model_config(name)
    return inspect.signature(builder).parameters["output_stride"].default


def markdown_table(rows, input_size=513):
    lines = [
        f"| model | output stride | parameters (total) | trainable | multiply-adds at {input_size}x{input_size} |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {r['output_stride']} | {r['params']:,} | {r['trainable_params']:,} "
            f"| {r['gmacs']:.2f}G |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print the model-zoo table (params, MACs).")
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("names", nargs="*", help="registered model names (default: all)")
    args = parser.parse_args(argv)
    print(markdown_table(zoo_rows(args.names or None, args.input_size), args.input_size))


if __name__ == "__main__":
    main()

__all__ = ["count_macs", "count_params", "markdown_table", "zoo_rows"]
