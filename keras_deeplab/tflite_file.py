"""Reading `.tflite` files: ops, their options, tensors and constants, in one place.

Used by the TFLite exporter (`keras_deeplab.export`: graph checks, verification, diagnosis)
and by the TFLite weights reader (`keras_deeplab.weights.tflite`). Op options come from the
flatbuffer itself (TensorFlow's generated schema classes), everything else from the LiteRT
interpreter.

Example:

```python
from keras_deeplab.tflite_file import TFLiteFile, op_counts

op_counts("deeplabv3_257_mv_gpu.tflite")  # {"ADD": 10, "CONCATENATION": 1, "CONV_2D": 38, ...}
graph = TFLiteFile("deeplabv3_257_mv_gpu.tflite")
conv = next(op for op in graph.ops if op["op_name"] == "CONV_2D")
graph.op_options(conv)  # {"op": "CONV_2D", "strides": (2, 2), "padding": "same", ...}
```
"""

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from keras_deeplab import _compat

TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer


def open_interpreter(path=None, content=None, num_threads=None, reference=False, **kwargs):
    """A LiteRT `Interpreter` of a file (or flatbuffer bytes), not yet allocated.

    `reference=True` runs TFLite's reference kernels without the default XNNPACK delegate
    (deterministic float32 sums); extra keyword arguments go to `Interpreter`.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if reference:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(
        model_path=None if path is None else str(path),
        model_content=content,
        num_threads=num_threads,
        **kwargs,
    )


def read_options(content):
    """`[{"op", "outputs", ...options}]` of every op of a flatbuffer, in graph order.

    Options: `strides` and `padding` (`"same"` / `"valid"`) of convs and pools, `dilation`
    of convs, `filter` of pools, `activation` (fused: `"NONE"`, `"RELU"`, `"RELU6"`, ...),
    `align_corners` / `half_pixel_centers` of RESIZE_BILINEAR, `axis` of CONCATENATION.
    """
    schema = _compat.tflite_schema()

    def names(enum):
        return {v: k for k, v in vars(enum).items() if not k.startswith("_")}

    operators, activations = names(schema.BuiltinOperator), names(schema.ActivationFunctionType)
    kinds = {
        schema.BuiltinOptions.Conv2DOptions: schema.Conv2DOptions,
        schema.BuiltinOptions.DepthwiseConv2DOptions: schema.DepthwiseConv2DOptions,
        schema.BuiltinOptions.Pool2DOptions: schema.Pool2DOptions,
        schema.BuiltinOptions.ResizeBilinearOptions: schema.ResizeBilinearOptions,
        schema.BuiltinOptions.ConcatenationOptions: schema.ConcatenationOptions,
        schema.BuiltinOptions.AddOptions: schema.AddOptions,
    }
    model = schema.Model.GetRootAs(content, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = codes[op.OpcodeIndex()]
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            entry = {
                "op": operators.get(builtin, "?"),
                "outputs": [op.Outputs(j) for j in range(op.OutputsLength())],
            }
            cls, table = kinds.get(op.BuiltinOptionsType()), op.BuiltinOptions()
            if cls is not None and table is not None:
                options = cls()
                options.Init(table.Bytes, table.Pos)
                entry.update(_options(options, schema, activations))
            found.append(entry)
    return found


def _options(options, schema, activations):
    entry = {}
    if hasattr(options, "StrideH"):
        entry["strides"] = (options.StrideH(), options.StrideW())
        entry["padding"] = "same" if options.Padding() == schema.Padding.SAME else "valid"
    if hasattr(options, "DilationHFactor"):
        entry["dilation"] = (options.DilationHFactor(), options.DilationWFactor())
    if hasattr(options, "FilterHeight"):
        entry["filter"] = (options.FilterHeight(), options.FilterWidth())
    if hasattr(options, "FusedActivationFunction"):
        code = options.FusedActivationFunction()
        entry["activation"] = activations.get(code, f"code {code}")
    if hasattr(options, "AlignCorners"):
        entry["align_corners"] = bool(options.AlignCorners())
        entry["half_pixel_centers"] = bool(options.HalfPixelCenters())
    if hasattr(options, "Axis"):
        entry["axis"] = options.Axis()
    return entry


def op_options(path=None, content=None):
    """`[{"op", ...options}]` of every op of a TFLite file (or bytes); see `read_options`."""
    return read_options(Path(path).read_bytes() if content is None else content)


def op_counts(path=None, content=None):
    """`{op name: count}` of a TFLite file (or flatbuffer bytes), sorted by name."""
    ops = _compat.tflite_ops(open_interpreter(path, content))
    return dict(sorted(Counter(op["op_name"] for op in ops).items()))


def detect_quantization(interpreter):
    """Quantization mode of a TFLite graph, read from its tensor types.

    `"int8"`: conv inputs are integer; `"dynamic"`: int8 conv weights on float inputs;
    `"float16"`: float16 constants; `"none"` otherwise.
    """
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv_inputs, conv_weights = set(), set()
    for op in _compat.tflite_ops(interpreter):
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            conv_inputs.add(tensors[op["inputs"][0]]["dtype"])
            conv_weights.add(tensors[op["inputs"][1]]["dtype"])
    if {np.int8, np.uint8} & conv_inputs:
        return "int8"
    if np.int8 in conv_weights:
        return "dynamic"
    if any(t["dtype"] == np.float16 for t in tensors.values()):
        return "float16"
    return "none"


class TFLiteFile:
    """A `.tflite` file's tensors, ops, op options and constants, read once.

    Attributes: `path`, `interpreter` (LiteRT, not allocated), `tensors` (`{index: details}`),
    `ops` (interpreter op details, graph order), `inputs` / `outputs` (tensor indices),
    `producer` (`{tensor: op}`), `consumers` (`{tensor: [ops]}`), `constants` (indices of
    tensors no op produces, graph inputs excluded). Bad files raise `ValueError` naming the
    path; `what` describes the expected file in that message.
    """

    def __init__(self, path, what="a .tflite file"):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such file (expected {what}).")
        data = self.path.read_bytes()
        if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
            raise ValueError(
                f"{self.path} is not a TFLite flatbuffer (no 'TFL3' file identifier); pass {what}."
            )
        try:
            self.interpreter = open_interpreter(content=data)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"{self.path} is not a readable TFLite file (truncated or corrupt?): {err}. "
                "Re-download or re-export it."
            ) from None
        self.tensors = {t["index"]: t for t in self.interpreter.get_tensor_details()}
        self.ops = _compat.tflite_ops(self.interpreter)
        self.options = {
            int(entry["outputs"][0]): entry for entry in read_options(data) if entry["outputs"]
        }
        self.inputs = [t["index"] for t in self.interpreter.get_input_details()]
        self.outputs = [t["index"] for t in self.interpreter.get_output_details()]
        self.producer = {}
        self.consumers = defaultdict(list)
        for op in self.ops:
            for t in op["outputs"]:
                self.producer[int(t)] = op
            for t in op["inputs"]:
                if t >= 0:
                    self.consumers[int(t)].append(op)
        self.constants = sorted(
            i for i in self.tensors if i not in self.producer and i not in self.inputs
        )

    def error(self, message):
        """A `ValueError` naming the file."""
        return ValueError(f"{self.path}: {message}")

    def name(self, index):
        return self.tensors[index]["name"]

    def shape(self, index):
        return tuple(int(d) for d in self.tensors[index]["shape"])

    def value(self, index):
        return np.asarray(self.interpreter.get_tensor(index))

    def op_options(self, op):
        """The flatbuffer options of an interpreter op (see `read_options`)."""
        return self.options.get(int(op["outputs"][0]), {})

    def constant_source(self, index):
        """The constant holding tensor `index` (through a float16 DEQUANTIZE), or None."""
        if index in self.constants:
            return index
        op = self.producer.get(index)
        if op is not None and op["op_name"] == "DEQUANTIZE":
            source = int(op["inputs"][0])
            if source in self.constants and self.tensors[source]["dtype"] == np.float16:
                return source
        return None

    def describe(self, op):
        return f"op {op['index']} {op['op_name']} -> {self.name(int(op['outputs'][0]))!r}"
