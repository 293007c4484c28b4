"""The fused training path of `keras_deeplab.layers.BatchNormalization` equals Keras' BN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab
from keras_deeplab.layers import BatchNormalization

# The real check, kept before the tests below replace the module's attribute.
from keras_deeplab.precision import cpu_has_bfloat16 as _cpu_runs_bfloat16


def _pair(channels=5, momentum=0.9, epsilon=1e-3, **kwargs):
    rng = np.random.default_rng(0)
    ours = BatchNormalization(momentum=momentum, epsilon=epsilon, **kwargs)
    theirs = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, **kwargs)
    for layer in (ours, theirs):
        layer.build((None, 9, 7, channels))
    if ours.scale:
        gamma = rng.normal(1.0, 0.2, channels).astype(np.float32)
        ours.gamma.assign(gamma)
        theirs.gamma.assign(gamma)
    if ours.center:
        beta = rng.normal(0.0, 0.2, channels).astype(np.float32)
        ours.beta.assign(beta)
        theirs.beta.assign(beta)
    return ours, theirs


def _step(layer, x, training=True):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        weights = np.random.default_rng(2).normal(size=y.shape).astype(np.float32)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [y, *grads, layer.moving_mean, layer.moving_variance]


def _assert_close(got, want, rtol=1e-4):
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(1.0, float(np.max(np.abs(b))))
        assert np.max(np.abs(a - b)) <= rtol * scale


@pytest.mark.parametrize("center_scale", [(True, True), (False, False)])
def test_fused_training_step_equals_keras(center_scale):
    center, scale = center_scale
    x = tf.constant(np.random.default_rng(1).normal(2, 3, (2, 9, 7, 5)).astype(np.float32))
    ours, theirs = _pair(center=center, scale=scale)
    _assert_close(_step(ours, x), _step(theirs, x))
    # The moving statistics moved (biased batch variance, Keras' convention).
    assert not np.allclose(ours.moving_variance.numpy(), 1.0)
    mean, var = np.mean(x.numpy(), (0, 1, 2)), np.var(x.numpy(), (0, 1, 2))
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5)


def test_fused_path_is_taken_and_fallbacks_are_keras():
    x = tf.random.normal((2, 9, 7, 5))
    ours, _ = _pair()
    graph = tf.function(lambda x: ours(x, training=True)).get_concrete_function(x).graph
    ops = {op.type for op in graph.get_operations()}
    assert "FusedBatchNormV3" in ops
    ours.fused = False
    graph = tf.function(lambda x: ours(x, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}
    ours.fused = True
    ours.synchronized = True  # sync BN needs cross-replica moments: Keras' path
    graph = tf.function(lambda x: ours(x, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}


def test_inference_mode_unchanged():
    x = tf.random.normal((2, 9, 7, 5))
    ours, theirs = _pair()
    _assert_close(_step(ours, x, training=False), _step(theirs, x, training=False), rtol=1e-6)


def test_mixed_bfloat16_matches_keras():
    x = tf.random.normal((2, 9, 7, 5))
    ours, theirs = _pair(dtype="mixed_bfloat16")
    got, want = _step(ours, tf.cast(x, tf.bfloat16)), _step(theirs, tf.cast(x, tf.bfloat16))
    assert got[0].dtype == want[0].dtype == tf.bfloat16
    _assert_close(got, want, rtol=1e-2)


def test_serialization_keeps_fused_flag():
    layer = BatchNormalization(momentum=0.9997, epsilon=1e-5, fused=False, name="bn")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is BatchNormalization
    assert clone.fused is False and clone.momentum == 0.9997


def test_models_use_the_fused_layer():
    model = keras_deeplab.create_model(
        "deeplabv3plus_mobilenetv2", num_classes=3, input_shape=(65, 65, 3)
    )
    bns = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and all(type(layer) is BatchNormalization for layer in bns)


@pytest.mark.parametrize(
    "on_gpu, cpu_bf16, channels, kernel_dtype",
    [
        (True, False, 4, tf.bfloat16),  # cuDNN takes any channel count
        (False, True, 16, tf.bfloat16),  # oneDNN's fast bf16 kernel: blocks of 16 channels
        (False, True, 32, tf.bfloat16),
        (False, True, 24, tf.float32),  # its slow path: a float32 copy is faster
        (False, False, 16, tf.float32),  # no bfloat16 unit
    ],
)
def test_half_precision_inputs_reach_the_fused_kernel_uncast_where_native(
    on_gpu, cpu_bf16, channels, kernel_dtype, monkeypatch
):
    """bfloat16 activations go into FusedBatchNormV3 as they are (no float32 copy) on GPUs and
    on CPUs with a bfloat16 unit at multiples of 16 channels; elsewhere as float32. The moving
    statistics stay float32 either way and equal the float32 layer's up to bfloat16 rounding."""
    import keras_deeplab.layers
    import keras_deeplab.precision

    monkeypatch.setattr(keras_deeplab.layers, "_on_gpu", lambda: on_gpu)
    monkeypatch.setattr(keras_deeplab.precision, "cpu_has_bfloat16", lambda: cpu_bf16)
    x = np.random.default_rng(3).normal(1.0, 2.0, (2, 5, 6, channels)).astype("float32")
    half = BatchNormalization(dtype="mixed_bfloat16")
    full = BatchNormalization()
    graph = (
        tf.function(lambda t: half(t, training=True))
        .get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
        .graph
    )
    fused = [op for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert fused and fused[0].get_attr("T") == kernel_dtype
    if on_gpu or (kernel_dtype == tf.bfloat16 and not _cpu_runs_bfloat16()):
        return  # the routing is what is checked; this machine cannot run that kernel
    half.moving_mean.assign(np.zeros(channels))
    half.moving_variance.assign(np.ones(channels))
    y = half(tf.constant(x), training=True)
    full(tf.constant(x), training=True)
    assert y.dtype == tf.bfloat16 and half.moving_mean.dtype == "float32"
    np.testing.assert_allclose(half.moving_mean, full.moving_mean, atol=2e-3)
    np.testing.assert_allclose(half.moving_variance, full.moving_variance, rtol=2e-2)


def test_native_bfloat16_batch_norm_equals_the_float32_copy(monkeypatch):
    """On a CPU with a bfloat16 unit the uncast kernel gives the cast path's outputs,
    gradients and statistics (both compute in float32 inside; the activations are bfloat16
    either way)."""
    if not _cpu_runs_bfloat16():
        pytest.skip("needs a CPU with amx_bf16 or avx512_bf16 (the native bfloat16 kernel)")
    import keras_deeplab.layers

    x = tf.constant(np.random.default_rng(4).normal(0.5, 3.0, (4, 9, 7, 32)), tf.bfloat16)
    results = []
    for native in (True, False):
        monkeypatch.setattr(keras_deeplab.layers, "_keeps_half_inputs", lambda d, c, n=native: n)
        layer = BatchNormalization(dtype="mixed_bfloat16")
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, 32))
        layer.beta.assign(np.linspace(-1.0, 1.0, 32))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(tf.nn.relu(y), tf.float32) * np.arange(32))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for native, cast in zip(*results, strict=True):
        a = tf.cast(tf.convert_to_tensor(native), tf.float32).numpy()
        b = tf.cast(tf.convert_to_tensor(cast), tf.float32).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3 * np.abs(b).max())  # bitwise here
