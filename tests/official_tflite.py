"""Test helpers for the official DeepLab TFLite file kept in `../shared/data/deeplabv3_tflite/`.

`model_structure.txt` lists every op of Google's `deeplabv3_257_mv_gpu.tflite` (MobileNetV2
dm 0.5, output stride 8, VOC) with its options and its input / output tensors
(`name[shape]`), followed by the weight tensors. `parse_model_structure` reads the op list;
`official_convs` keeps the CONV_2D / DEPTHWISE_CONV_2D ops with their weight tensor.
"""

import ast
import re
from pathlib import Path
from typing import NamedTuple

from conftest import shared_data_dir

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")

_OP_LINE = re.compile(r"^\s*(\d+)\s+([A-Z0-9_]+)\s*(.*)$")
_TENSOR = re.compile(r"^(.*)\[([\d,\s]*)\]$")


def official_tflite_dir():
    """Folder of the official DeepLab TFLite file and its derived references."""
    return shared_data_dir("deeplabv3_tflite")


class TfliteOp(NamedTuple):
    """One op of `model_structure.txt`. Tensors are `(name, shape)` pairs."""

    index: int
    op: str
    options: dict
    inputs: tuple
    outputs: tuple


class OfficialConv(NamedTuple):
    """A conv op: weight shape in TFLite layout, stride and dilation as `(h, w)` ints."""

    op: str
    weight: str
    shape: tuple
    stride: tuple
    dilation: tuple


def _parse_tensors(text):
    tensors = []
    for item in ast.literal_eval(text):
        match = _TENSOR.match(item)
        if match is None:
            raise ValueError(f"cannot parse tensor {item!r}")
        dims = match.group(2).replace(" ", "")
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        tensors.append((match.group(1), shape))
    return tuple(tensors)


def _parse_options(text):
    options = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            options[key] = value
    return options


def _pair(value):
    return tuple(int(v) for v in value.split(","))


def model_structure_path():
    return official_tflite_dir() / "model_structure.txt"


def parse_model_structure(path=None):
    """All ops of `model_structure.txt`, in execution order, as `TfliteOp`s."""
    path = Path(path) if path is not None else model_structure_path()
    ops = []
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("WEIGHT TENSORS"):
            break
        stripped = line.strip()
        if stripped.startswith("in="):
            current["inputs"] = _parse_tensors(stripped[3:])
        elif stripped.startswith("out="):
            current["outputs"] = _parse_tensors(stripped[4:])
        else:
            match = _OP_LINE.match(line)
            if match is None:
                continue
            current = {
                "index": int(match.group(1)),
                "op": match.group(2),
                "options": _parse_options(match.group(3)),
                "inputs": (),
                "outputs": (),
            }
            ops.append(current)
    return [TfliteOp(**op) for op in ops]


def official_convs(path=None, weight_prefix=""):
    """Ordered `OfficialConv`s of the CONV_2D / DEPTHWISE_CONV_2D ops.

    Args:
        path: `model_structure.txt` (default: the shared copy).
        weight_prefix: keep only ops whose weight name starts with this (e.g.
            `"MobilenetV2/"` for the backbone).
    """
    convs = []
    for op in parse_model_structure(path):
        if op.op not in CONV_OPS:
            continue
        weight, shape = op.inputs[1]
        if not weight.startswith(weight_prefix):
            continue
        convs.append(
            OfficialConv(
                op=op.op,
                weight=weight,
                shape=shape,
                stride=_pair(op.options["stride"]),
                dilation=_pair(op.options["dil"]),
            )
        )
    return convs


def keras_kernel_shape(conv):
    """TFLite weight shape -> Keras kernel shape.

    CONV_2D `[out, kh, kw, in]` -> `[kh, kw, in, out]`; DEPTHWISE `[1, kh, kw, C]` ->
    `[kh, kw, C, 1]`: the same axis move (first axis last) for both.
    """
    first, *rest = conv.shape
    return (*rest, first)


def to_keras_kernel(array):
    """TFLite conv / depthwise weight array -> Keras kernel (first axis moved last)."""
    return array.transpose(1, 2, 3, 0)


def keras_layer_name(weight_name, scope=""):
    """Keras layer name of an official weight tensor (`scope` dropped, "/" -> "_").

    `MobilenetV2/expanded_conv_1/expand/weights` with scope `MobilenetV2/` ->
    `expanded_conv_1_expand`.
    """
    if scope and weight_name.startswith(scope):
        weight_name = weight_name[len(scope) :]
    layer_scope = weight_name.rsplit("/", 1)[0]
    return layer_scope.replace("/", "_")
