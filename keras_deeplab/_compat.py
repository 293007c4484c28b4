"""Every private Keras / TensorFlow / LiteRT API the package uses, one small function each.

The package is tested with the versions pinned in `setup.cfg` (`PINNED`). The functions below
are the only places that touch framework internals; `tests/test_compat.py` checks each one
against the installed versions, and each raises `RuntimeError` naming the package, its
installed version and the tested one when the internal it needs is gone.

Example:

```python
from keras_deeplab import _compat

for node in _compat.graph_nodes(model):  # a functional model's own graph, inputs first
    print(node.operation.name, [t.shape for t in node.outputs])
```
"""

from importlib import metadata

PINNED = {"keras": "3.15.1", "tensorflow": "2.21.0", "ai-edge-litert": "2.3.0"}


def installed_version(package):
    """Installed version of a distribution (`"keras"`, `"tensorflow"`, ...), or `"unknown"`."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _missing(package, what, error):
    return RuntimeError(
        f"keras_deeplab uses {package}'s private {what}, which {package} "
        f"{installed_version(package)} does not provide ({type(error).__name__}: {error}); "
        f"install the tested version: pip install {package}=={PINNED[package]}"
    )


def _attribute(obj, name, package, what):
    try:
        return getattr(obj, name)
    except AttributeError as error:
        raise _missing(package, what, error) from None


# ---------------------------------------------------------------- Keras


def functional_class():
    """`keras.src.models.functional.Functional`: the class of `keras.Model(inputs, outputs)`."""
    try:
        from keras.src.models.functional import Functional
    except ImportError as error:
        raise _missing("keras", "keras.src.models.functional.Functional", error) from None
    return Functional


def is_functional(model):
    """True for functional-API models (subclasses included), whose graph can be walked."""
    return isinstance(model, functional_class())


def graph_nodes(functional):
    """The nodes of `functional`'s own graph (not of nested models), inputs first.

    Each node has `.operation` (the layer called), `.input_tensors` and `.outputs`
    (lists of KerasTensors).
    """
    by_depth = _attribute(functional, "_nodes_by_depth", "keras", "Functional._nodes_by_depth")
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def run_through_graph(functional, inputs, call_fn):
    """Outputs of `functional`'s graph rebuilt on `inputs`, each layer call made by
    `call_fn(layer, *args, **kwargs)` (e.g. to replace or skip layers)."""
    run = _attribute(functional, "_run_through_graph", "keras", "Functional._run_through_graph")
    return run(inputs, operation_fn=lambda layer: layer, call_fn=call_fn)


def layer_calls(layer, graph=None):
    """`[(input KerasTensors, output KerasTensors)]`, one pair per call of `layer` in a graph.

    `graph`: a functional or Sequential model; only the calls that belong to its graph (a
    Sequential model's layers also keep the calls of its internal builds).
    """
    nodes = _attribute(layer, "_inbound_nodes", "keras", "Layer._inbound_nodes")
    graph = getattr(graph, "_functional", None) or graph  # a Sequential's own graph
    keys = getattr(graph, "_nodes", None)  # {f"{id(layer)}_ib-{index}"}: keras.src.ops.function
    if keys:
        nodes = [node for i, node in enumerate(nodes) if f"{id(layer)}_ib-{i}" in keys]
    return [(list(node.input_tensors), list(node.outputs)) for node in nodes]


def all_layers(model):
    """Every layer inside `model`, nested models and their layers included (not `model`)."""
    flatten = _attribute(model, "_flatten_layers", "keras", "Layer._flatten_layers")
    return list(flatten(include_self=False, recursive=True))


# ---------------------------------------------------------------- LiteRT / TensorFlow Lite


def tflite_ops(interpreter):
    """`[{"index", "op_name", "inputs", "outputs"}]`: the ops of a LiteRT `Interpreter`."""
    details = _attribute(
        interpreter, "_get_ops_details", "ai-edge-litert", "Interpreter._get_ops_details"
    )
    return details()


def tflite_schema():
    """TensorFlow's generated flatbuffer classes of the TFLite schema (`Model`, options, ...)."""
    try:
        from tensorflow.lite.python import schema_py_generated
    except ImportError as error:
        raise _missing("tensorflow", "tensorflow.lite.python.schema_py_generated", error) from None
    return schema_py_generated


__all__ = [
    "PINNED",
    "all_layers",
    "functional_class",
    "graph_nodes",
    "installed_version",
    "is_functional",
    "layer_calls",
    "run_through_graph",
    "tflite_ops",
    "tflite_schema",
]
