"""`keras_deeplab._compat`: each private Keras / TF / LiteRT API, checked as the package uses it.

A failure names the package, its installed version and the tested pin: the internal changed,
and `keras_deeplab/_compat.py` (only that file) needs updating.
"""

import configparser
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab import _compat
from keras_deeplab.tflite_file import open_interpreter, read_options


def _where(package):
    return (
        f"{package} {_compat.installed_version(package)} (tested: {_compat.PINNED[package]}) "
        "changed a private API: update keras_deeplab/_compat.py"
    )


def _nested_model():
    """input -> dense_a -> inner (dense_b) -> dense_c, and dense_a called twice."""
    inner_in = keras.Input((4,), name="inner_in")
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="dense_b")(inner_in), name="inner")
    x = keras.Input((4,), name="x")
    dense_a = keras.layers.Dense(4, name="dense_a")
    y = dense_a(dense_a(x))
    y = inner(y)
    y = keras.layers.Dense(3, name="dense_c")(y)
    return keras.Model(x, y, name="outer")


def test_pins_are_the_ones_setup_cfg_installs():
    config = configparser.ConfigParser()
    config.read(Path(__file__).parents[1] / "setup.cfg")
    requires = config["options"]["install_requires"]
    pins = dict(re.findall(r"^\s*([A-Za-z0-9_.-]+)==(\S+)", requires, re.M))
    for package, version in _compat.PINNED.items():
        assert pins.get(package) == version, (
            f"setup.cfg pins {package}=={pins.get(package)}, _compat.PINNED says {version}: "
            "re-run tests/test_compat.py against the new version and update PINNED"
        )


def test_functional_class_and_is_functional():
    model = _nested_model()
    functional = _compat.functional_class()
    assert isinstance(model, functional), _where("keras")
    assert _compat.is_functional(model) and _compat.is_functional(model.get_layer("inner"))
    assert not _compat.is_functional(model.get_layer("dense_c"))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _compat.is_functional(Subclassed()), _where("keras")


def test_graph_nodes_walk_the_own_graph_inputs_first():
    model = _nested_model()
    nodes = _compat.graph_nodes(model)
    names = [node.operation.name for node in nodes]
    assert names == ["x", "dense_a", "dense_a", "inner", "dense_c"], _where("keras")
    by_output = {id(t): node for node in nodes for t in node.outputs}
    for node in nodes[1:]:  # every call's input is the previous call's output
        assert len(node.input_tensors) == 1, _where("keras")
        producer = by_output[id(node.input_tensors[0])]
        assert nodes.index(producer) == nodes.index(node) - 1, _where("keras")
    assert [n.operation.name for n in _compat.graph_nodes(model.get_layer("inner"))] == [
        "inner_in",
        "dense_b",
    ], _where("keras")


def test_run_through_graph_rebuilds_with_replaced_calls():
    model = _nested_model()
    seen = []

    def call(layer, *args, **kwargs):
        seen.append(layer.name)
        if layer.name == "dense_c":
            return args[0][:, :3]  # replaced by a slice
        return layer(*args, **kwargs)

    x = keras.Input((4,))
    outputs = _compat.run_through_graph(model, x, call)
    rebuilt = keras.Model(x, outputs)
    assert seen == ["dense_a", "dense_a", "inner", "dense_c"], _where("keras")
    data = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    inner = model.get_layer("inner")
    dense_a = model.get_layer("dense_a")
    expected = np.asarray(inner(dense_a(dense_a(data))))[:, :3]
    np.testing.assert_allclose(np.asarray(rebuilt(data)), expected, atol=1e-6)


def test_layer_calls_one_pair_per_call():
    model = _nested_model()
    calls = _compat.layer_calls(model.get_layer("dense_a"))
    assert len(calls) == 2, _where("keras")
    for inputs, outputs in calls:
        assert [tuple(t.shape) for t in inputs] == [(None, 4)], _where("keras")
        assert [tuple(t.shape) for t in outputs] == [(None, 4)], _where("keras")
    ((inputs, outputs),) = _compat.layer_calls(model.get_layer("dense_c"))
    assert tuple(outputs[0].shape) == (None, 3), _where("keras")


def test_all_layers_recurses_into_nested_models():
    model = _nested_model()
    names = [layer.name for layer in _compat.all_layers(model)]
    assert "outer" not in names, _where("keras")
    assert {"dense_a", "inner", "dense_b", "dense_c"} <= set(names), _where("keras")
    assert names.count("dense_a") == 1, _where("keras")


@pytest.fixture(scope="module")
def tiny_tflite():
    """A dilated ReLU6 conv, an align-corners resize and a channel concat, as flatbuffer bytes."""
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([1, 9, 9, 3], tf.float32)])
    def graph(x):
        y = tf.nn.relu6(tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=2))
        y = tf.compat.v1.image.resize_bilinear(y, (17, 17), align_corners=True)
        return tf.concat([y, y], axis=-1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()])
    return converter.convert()


def test_tflite_ops_lists_the_interpreters_ops(tiny_tflite):
    ops = _compat.tflite_ops(open_interpreter(content=tiny_tflite))
    assert [op["op_name"] for op in ops] == [
        "CONV_2D",
        "RESIZE_BILINEAR",
        "CONCATENATION",
    ], _where("ai-edge-litert")
    for op in ops:
        assert {"index", "op_name", "inputs", "outputs"} <= set(op), _where("ai-edge-litert")
        assert all(int(t) >= -1 for t in [*op["inputs"], *op["outputs"]])


def test_tflite_schema_reads_the_options_used(tiny_tflite):
    schema = _compat.tflite_schema()
    for name in ("Model", "BuiltinOperator", "BuiltinOptions", "ActivationFunctionType"):
        assert hasattr(schema, name), _where("tensorflow")
    conv, resize, concat = read_options(tiny_tflite)
    assert conv["op"] == "CONV_2D", _where("tensorflow")
    assert (conv["strides"], conv["dilation"], conv["padding"], conv["activation"]) == (
        (1, 1),
        (2, 2),
        "same",
        "RELU6",
    ), _where("tensorflow")
    assert resize["op"] == "RESIZE_BILINEAR", _where("tensorflow")
    assert resize["align_corners"] is True and resize["half_pixel_centers"] is False
    assert (concat["op"], concat["axis"], concat["activation"]) == ("CONCATENATION", -1, "NONE")


def test_missing_internal_names_the_package_version_and_fix():
    with pytest.raises(RuntimeError, match=r"keras's private Functional\._nodes_by_depth") as err:
        _compat.graph_nodes(object())
    message = str(err.value)
    assert f"keras {_compat.installed_version('keras')}" in message
    assert f"pip install keras=={_compat.PINNED['keras']}" in message
    with pytest.raises(RuntimeError, match=r"ai-edge-litert \S+ does not provide"):
        _compat.tflite_ops(object())
