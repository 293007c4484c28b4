"""The model-zoo table: every registered model's output stride, parameters and multiply-adds.

`keras-deeplab table` prints it (the README's table is its output); so does
`python -m keras_deeplab.zoo`.

Example:

```python
from keras_deeplab.zoo import markdown_table, zoo_rows

print(markdown_table(zoo_rows(["deeplabv3_mobilenetv2"])))
```
"""

import argparse

import keras

from keras_deeplab.macs import count_macs, count_params
from keras_deeplab.models import create_model, list_models


def zoo_rows(names=None, input_size=513):
    """One dict per registered model: name, output stride, parameters, multiply-adds for one
    `input_size` x `input_size` image."""
    rows = []
    for name in names or list_models():
        model = create_model(name)
        total, trainable = count_params(model)
        rows.append(
            {
                "name": name,
                "output_stride": model.output_stride,
                "params": total,
                "trainable_params": trainable,
                "gmacs": count_macs(model, _network_input(model, input_size)) / 1e9,
            }
        )
        keras.backend.clear_session()
    return rows


def _network_input(model, size):
    """The input the network runs on for a `size` x `size` image: the image itself, or for
    models with smaller logits (valid U-Net) the mirror-padded tile the Segmenter feeds."""
    padding = model.overlap_tile_padding(size)
    side = size if padding is None else size + sum(padding)
    return side, side


def markdown_table(rows, input_size=513):
    """The rows of `zoo_rows` as the README's Markdown table."""
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

__all__ = ["markdown_table", "zoo_rows"]
