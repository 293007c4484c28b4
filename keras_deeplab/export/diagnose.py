"""Finding the first layer where a `.tflite` file departs from its Keras model.

When a verification fails, `diagnose_tflite` re-runs the file on TFLite's reference kernels
keeping every intermediate tensor, matches each tensor by name to the Keras layer that
produced it, computes that layer's output in Keras, and reports the first tensor (in
execution order) whose relative error exceeds `DIVERGENCE_THRESHOLDS[mode]`.

Example:

```python
diagnosis = diagnose_tflite(ExportGraph(model), "deeplab.tflite", rgb_image)
diagnosis["first_diverging"]  # {"layer", "tensor", "max_abs_diff", "relative_error"} or None
```
"""

import re
from collections import Counter

import keras
import numpy as np

from keras_deeplab import _compat
from keras_deeplab.export.interpreter import dequantize, invoke, quantize_input
from keras_deeplab.export.model_info import inner_model
from keras_deeplab.msc import MultiScaleInputs
from keras_deeplab.tflite_file import open_interpreter

# Relative error (max |tflite - keras| / max |keras|) above which an intermediate tensor
# counts as diverged when a failed verification looks for the first bad layer.
DIVERGENCE_THRESHOLDS = {"none": 1e-3, "float16": 2e-2, "dynamic": 0.1, "int8": 0.25}


def _graph_outputs(functional):
    """`{layer name: KerasTensor}` of layers called once in `functional`'s own graph."""
    calls = Counter()
    outputs, nested = {}, {}
    for node in _compat.graph_nodes(functional):
        layer = node.operation
        calls[layer.name] += 1
        if len(node.outputs) == 1:
            outputs[layer.name] = node.outputs[0]
        if _compat.is_functional(layer):
            nested[layer.name] = (layer, node.input_tensors)
    return {k: v for k, v in outputs.items() if calls[k] == 1}, nested


def _match_layer(tensor_name, names, nested):
    """Keras layer of a TFLite tensor name: `(nested model name or None, layer name)` or None.

    Converter names look like `model_1/backbone_1/layer_1/Op;...` (fused ops list every
    source op; the first is the last one applied). TF adds `_<n>` suffixes to scopes.
    """
    parts = tensor_name.split(";")[0].split("/")
    container, found = None, None
    for part in parts:
        candidates = (part, re.sub(r"_\d+$", "", part))
        scope_names = names if container is None else nested[container][2]
        for candidate in candidates:
            if container is None and candidate in nested:
                container = candidate
                break
            if candidate in scope_names:
                found = (container, candidate)
                break
    return found


def _single(inputs):
    return inputs[0] if isinstance(inputs, list | tuple) and len(inputs) == 1 else inputs


def _probe(functional, tensors, x, names, chunk=32):
    """Yields `(names, arrays)`: values of `functional`'s KerasTensors for input `x`, a few
    dozen at a time (bounded memory on large models)."""
    for start in range(0, len(tensors), chunk):
        part = tensors[start : start + chunk]
        values = keras.Model(_single(functional.inputs), part)(x, training=False)
        values = values if isinstance(values, list | tuple) else [values]
        yield names[start : start + chunk], [np.asarray(v) for v in values]
    if not tensors:
        yield [], []


def diagnose_tflite(exported, path, rgb, mode="none"):
    """Compares every intermediate tensor of the file with its Keras layer output.

    Returns `{"first_diverging", "worst", "compared", "layers"}` (or `{"reason"}` when not
    feasible: non-functional models). Each entry: layer, TFLite tensor, relative error
    `max |tflite - keras| / max |keras|`. A tensor diverges above
    `DIVERGENCE_THRESHOLDS[mode]`. Tensors are matched by name: the converter names fused
    ops after their last Keras layer (e.g. conv + BN + ReLU -> the ReLU layer).
    """
    core = inner_model(exported.core)
    if not _compat.is_functional(core):
        return {"reason": f"model {core.name!r} is not a functional Keras model"}
    if isinstance(exported.core, MultiScaleInputs):
        return {"reason": "multi-scale (MSC) models run the network several times"}
    try:
        outer, nested_models = _graph_outputs(core)
        nested = {}
        for name, (layer, inputs) in nested_models.items():
            inner, _ = _graph_outputs(layer)
            nested[name] = (layer, inputs, inner)
    except (AttributeError, TypeError) as err:
        return {"reason": f"cannot read the Keras graph ({err})"}

    interpreter = open_interpreter(path, reference=True, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    x = exported.to_input(rgb[None])
    in_detail = interpreter.get_input_details()[0]
    invoke(interpreter, in_detail["index"], quantize_input(x, in_detail))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    # A Keras layer may lower to several ops (e.g. preprocessing: MUL, SUB): its output is the
    # last tensor, in execution order, named in its scope.
    last = {}
    for op in _compat.tflite_ops(interpreter):
        for index in op["outputs"]:
            detail = tensors[int(index)]
            match = _match_layer(detail["name"], outer, nested)
            if match is not None:
                last.pop(match, None)
                last[match] = detail
    matched = [(detail, *match) for match, detail in last.items()]
    if not matched:
        return {"reason": "no TFLite tensor name matches a Keras layer"}

    # Keras values: the outer graph, then each nested model from its input in the outer graph.
    core_input = x if exported.prepend is None else np.asarray(exported.prepend(x))
    wanted_outer = sorted({layer for _, c, layer in matched if c is None})
    wanted_nested = {}
    for _, c, layer in matched:
        if c is not None:
            wanted_nested.setdefault(c, set()).add(layer)
    keras_values = {}
    for names, values in _probe(core, [outer[n] for n in wanted_outer], core_input, wanted_outer):
        keras_values.update({(None, n): v for n, v in zip(names, values, strict=True)})
    for c, layers in wanted_nested.items():
        model, inputs, inner = nested[c]
        feeds = next(_probe(core, list(inputs), core_input, list(range(len(inputs)))))[1]
        feed = feeds[0] if len(feeds) == 1 else feeds
        layers = sorted(layers)
        for names, values in _probe(model, [inner[n] for n in layers], feed, layers):
            keras_values.update({(c, n): v for n, v in zip(names, values, strict=True)})

    threshold = DIVERGENCE_THRESHOLDS[mode]
    entries = []
    for detail, container, layer in matched:
        ref = keras_values[(container, layer)]
        got = dequantize(interpreter.get_tensor(detail["index"]), detail)
        if got.shape != ref.shape:
            continue
        error = float(np.max(np.abs(got.astype(np.float32) - ref)))
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        entries.append(
            {
                "layer": layer if container is None else f"{container}/{layer}",
                "tensor": detail["name"].split(";")[0],
                "max_abs_diff": error,
                "relative_error": error / scale,
            }
        )
    if not entries:
        return {"reason": "no matched tensor has the Keras layer's shape"}
    first = next((e for e in entries if e["relative_error"] > threshold), None)
    worst = max(entries, key=lambda e: e["relative_error"])
    return {
        "threshold": threshold,
        "compared": len(entries),
        "first_diverging": first,
        "worst": worst,
        "layers": entries,
    }
