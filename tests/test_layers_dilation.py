"""Dilated depthwise convs on TF builds with and without a native dilated kernel.

oneDNN builds run `DepthwiseConv2dNative` with dilation > 1; TF's Eigen CPU kernel (CPUs
without AVX-512, macOS) raises "does not support dilations". `layers.DepthwiseConv2D`
probes once and falls back to space-to-batch; the TFLite export still traces the native op.
Each path is tested on any machine by pretending the probe's answer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab import create_model, layers
from keras_deeplab.export import to_tflite
from keras_deeplab.tflite_file import op_counts, op_options


@pytest.fixture(params=[True, False], ids=["native", "space_to_batch"])
def native(request, monkeypatch):
    if request.param and not layers.native_dilated_depthwise():
        pytest.skip("this TF build has no native dilated depthwise kernel (the fallback is tested)")
    monkeypatch.setattr(layers, "_NATIVE_DEPTHWISE", {"CPU": request.param, "GPU": request.param})
    return request.param


def _pair(rate):
    ours = layers.DepthwiseConv2D(3, padding="same", dilation_rate=rate, use_bias=True)
    reference = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=rate, use_bias=True)
    shape = (2, 19, 23, 4)
    ours.build(shape)
    reference.build(shape)
    rng = np.random.default_rng(0)
    ours.set_weights([rng.normal(size=w.shape).astype("float32") for w in ours.get_weights()])
    reference.set_weights(ours.get_weights())
    return ours, reference, rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("rate", [1, 2, (3, 5)])
def test_values_and_gradients_equal_keras(native, rate):
    ours, reference, x = _pair(rate)
    x = tf.constant(x)
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        results.append((y, *tape.gradient(loss, [x, layer.kernel])))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _traced_ops(layer, x):
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec(x.shape)).graph
    return {op.type: op for op in graph.get_operations()}


def test_traced_graph_follows_the_probe(native):
    ours, _, x = _pair(2)
    ops = _traced_ops(ours, x)
    depthwise = ops["DepthwiseConv2dNative"]
    assert list(depthwise.get_attr("dilations")) == ([1, 2, 2, 1] if native else [1, 1, 1, 1])
    assert ("SpaceToBatchND" in ops) == (not native)
    with layers.force_native_dilation():
        forced = _traced_ops(ours, x)
    assert list(forced["DepthwiseConv2dNative"].get_attr("dilations")) == [1, 2, 2, 1]
    assert "SpaceToBatchND" not in forced
    assert not getattr(layers._FORCE_NATIVE, "on", False)  # the context restores the flag


def test_probe_matches_running_the_kernel():
    x = tf.zeros([1, 5, 5, 2])
    kernel = tf.zeros([3, 3, 2, 1])
    try:
        tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=kernel, strides=[1, 1, 1, 1], padding="SAME", dilations=[1, 2, 2, 1]
        )
        runs = True
    except tf.errors.UnimplementedError:
        runs = False
    assert layers.native_dilated_depthwise() == runs


def test_tflite_export_keeps_native_dilations_without_the_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(layers, "_NATIVE_DEPTHWISE", {"CPU": False, "GPU": False})
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    report = to_tflite(model, tmp_path / "m.tflite", input_size=33)  # verified against Keras
    assert report["passed"]
    counts = op_counts(tmp_path / "m.tflite")
    assert "SPACE_TO_BATCH_ND" not in counts and "BATCH_TO_SPACE_ND" not in counts
    options = op_options(tmp_path / "m.tflite")
    dilations = {op["dilation"] for op in options if op["op"] == "DEPTHWISE_CONV_2D"}
    assert {(2, 2), (4, 4)} <= dilations
