"""Running an exported `.tflite` in LiteRT: its signature, integer I/O, invocation, latency.

Example:

```python
from keras_deeplab.tflite_file import open_interpreter

interpreter = open_interpreter("deeplab.tflite", num_threads=2)
interpreter.allocate_tensors()
in_key, in_detail, out_key, out_detail = signature(interpreter)
invoke(interpreter, in_detail["index"], quantize_input(x, in_detail))
y = dequantize(interpreter.get_tensor(out_detail["index"]), out_detail)  # float32
```
"""

import numpy as np

from keras_deeplab.export.report import time_calls

SIGNATURE = "serving_default"


def signature(interpreter):
    """`(input key, input details, output key, output details)` of a one-in one-out file.

    Keys are the `serving_default` signature's names (e.g. `image`, `logits`); files
    without that signature use the tensor names.
    """
    signatures = interpreter.get_signature_list()
    if SIGNATURE in signatures:
        runner = interpreter.get_signature_runner(SIGNATURE)
        (in_key, in_detail), *more_in = runner.get_input_details().items()
        outputs = runner.get_output_details()
        if not more_in and len(outputs) == 1:
            (out_key, out_detail) = next(iter(outputs.items()))
            return in_key, in_detail, out_key, out_detail
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"expected one input and one output; got {len(inputs)} and {len(outputs)}."
        )
    return inputs[0]["name"], inputs[0], outputs[0]["name"], outputs[0]


def quantize_input(x, detail):
    """Float input -> the tensor's type (rounded and clipped for integer inputs)."""
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def dequantize(y, detail):
    """An integer tensor with quantization parameters -> float32; other tensors unchanged."""
    scale, zero = detail["quantization"]
    if y.dtype in (np.int8, np.uint8, np.int16) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y


def invoke(interpreter, index, x):
    """Sets input tensor `index` to `x` and runs the graph."""
    interpreter.set_tensor(index, x)
    interpreter.invoke()


def measure_latency(interpreter, runs=10, warmup=2, x=None):
    """Median / min wall time (ms) of `interpreter.invoke()` after `warmup` calls."""
    detail = interpreter.get_input_details()[0]
    if x is None:
        x = np.zeros(detail["shape"], detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    return time_calls(interpreter.invoke, runs=runs, warmup=warmup)


def describe_tensor(detail, key):
    """A tensor of the file for the report: key, name, shape, dtype, quantization."""
    scale, zero = detail["quantization"]
    return {
        "key": key,
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": None if not scale else [float(scale), int(zero)],
    }
