"""Dilated convs on TF builds with and without native dilated kernels.

oneDNN builds run `DepthwiseConv2dNative` with dilation > 1 and the filter gradient of a
dilated `Conv2D`; TF's Eigen CPU kernels (CPUs without AVX-512, macOS) raise "does not
support dilations". `layers.Conv2D` / `DepthwiseConv2D` probe once and fall back to
space-to-batch; the TFLite export still traces the native ops. Each path is tested on any
machine by pretending the probe's answer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab import layers
from keras_deeplab.export import to_tflite
from keras_deeplab.tflite_file import op_counts, op_options


@pytest.fixture(params=[True, False], ids=["native", "space_to_batch"])
def native(request, monkeypatch):
    if request.param and not (layers.native_dilation("conv") and layers.native_dilation()):
        pytest.skip("this TF build has no native dilated kernels (the fallback is tested)")
    _pretend(monkeypatch, request.param)
    return request.param


def _pretend(monkeypatch, native):
    answers = {
        (kind, device, dtype): native
        for kind in KINDS
        for device in ("CPU", "GPU")
        for dtype in ("float32", "bfloat16", "float16")
    }
    monkeypatch.setattr(layers, "_NATIVE_DILATION", answers)


KINDS = {"conv": "Conv2D", "depthwise": "DepthwiseConv2D"}
OPS = {"conv": "Conv2D", "depthwise": "DepthwiseConv2dNative"}


def _pair(rate, kind="depthwise"):
    args = (5, 3) if kind == "conv" else (3,)  # (filters, kernel size) / kernel size
    ours = getattr(layers, KINDS[kind])(*args, padding="same", dilation_rate=rate)
    reference = getattr(keras.layers, KINDS[kind])(*args, padding="same", dilation_rate=rate)
    shape = (2, 19, 23, 4)
    ours.build(shape)
    reference.build(shape)
    rng = np.random.default_rng(0)
    ours.set_weights([rng.normal(size=w.shape).astype("float32") for w in ours.get_weights()])
    reference.set_weights(ours.get_weights())
    return ours, reference, rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("rate", [1, 2, (3, 5)])
def test_values_and_gradients_equal_keras(native, rate, kind):
    ours, reference, x = _pair(rate, kind)
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


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_traced_graph_follows_the_probe(native, kind):
    ours, _, x = _pair(2, kind)
    ops = _traced_ops(ours, x)
    conv = ops[OPS[kind]]
    assert list(conv.get_attr("dilations")) == ([1, 2, 2, 1] if native else [1, 1, 1, 1])
    assert ("SpaceToBatchND" in ops) == (not native)
    with layers.force_native_dilation():
        forced = _traced_ops(ours, x)
    assert list(forced[OPS[kind]].get_attr("dilations")) == [1, 2, 2, 1]
    assert "SpaceToBatchND" not in forced
    assert not getattr(layers._FORCE_NATIVE, "on", False)  # the context restores the flag


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_probe_matches_the_raw_native_op(kind):
    """The probe's answer, recomputed here from the raw ops: the forward (and for `conv` the
    filter gradient) equals Keras' space-to-batch result, or the op raises."""
    ours, reference, x = _pair(2, kind)
    kernel = tf.constant(ours.get_weights()[0])
    options = {"strides": [1] * 4, "padding": "SAME", "dilations": [1, 2, 2, 1]}
    try:
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = getattr(tf.raw_ops, OPS[kind])(input=x, filter=kernel, **options)
        results = [y]
        if kind == "conv":
            results.append(tape.gradient(y, kernel))
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        results = None
    if results is not None:
        bias = ours.get_weights()[1]
        with tf.GradientTape() as tape:
            expected = reference(x)
        wanted = [expected - bias, tape.gradient(expected, reference.kernel)][: len(results)]
        results = all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
            for a, b in zip(results, wanted, strict=True)
        )
    assert layers.native_dilation(kind) == bool(results)


def test_depthwise_gradient_is_exact_where_the_forward_is_native(monkeypatch):
    """TF's depthwise gradient kernels ignore the dilation: the layer's gradient must
    come from the space-to-batch form even where the forward runs natively."""
    if not layers.native_dilation():
        pytest.skip("no native dilated depthwise forward on this TF build")
    ours, reference, x = _pair(2)
    ops = _traced_ops(ours, x)
    assert "SpaceToBatchND" not in ops and "DepthwiseConv2dNative" in ops
    x = tf.constant(x)
    grads = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 2)
        grads.append(tape.gradient(loss, [x, layer.kernel]))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


def test_probe_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="'conv' or 'depthwise'"):
        layers.native_dilation("separable")


def test_tflite_export_keeps_native_dilations_without_the_kernel(monkeypatch, tmp_path):
    _pretend(monkeypatch, False)
    inputs = keras.Input((17, 17, 3))
    x = layers.Conv2D(4, 3, padding="same", dilation_rate=2)(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=4)(x)
    model = keras.Model(inputs, layers.Conv2D(3, 1)(x))
    path = tmp_path / "m.tflite"
    report = to_tflite(model, path, input_size=17)  # verified against the Keras model
    assert report["passed"]
    counts = op_counts(path)
    assert "SPACE_TO_BATCH_ND" not in counts and "BATCH_TO_SPACE_ND" not in counts
    dilations = {(op["op"], op["dilation"]) for op in op_options(path) if "dilation" in op}
    assert {("CONV_2D", (2, 2)), ("DEPTHWISE_CONV_2D", (4, 4))} <= dilations
