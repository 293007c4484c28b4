"""`MaxPoolingWithMask` / `MaxUnpooling` against `tf.nn.max_pool_with_argmax` + scatter.

The mask formulation (TFLite builtins only) must put every value exactly where indexed
unpooling with TF's argmax puts it, ties included (first position of the window), for odd
sizes too (Caffe ceil mode); it must convert to TFLite with builtin ops only.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab.unpooling import MaxPoolingWithMask, MaxUnpooling


def _reference_unpool(x, values):
    """Ceil-mode pooling with `tf.nn.max_pool_with_argmax` and scatter of `values` there."""
    x = tf.convert_to_tensor(x)
    batch, height, width, channels = x.shape
    padded = tf.pad(
        x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]], constant_values=x.dtype.min
    )
    pooled, argmax = tf.nn.max_pool_with_argmax(padded, 2, 2, "VALID", include_batch_in_index=True)
    padded_size = int(np.prod(padded.shape))
    flat = tf.scatter_nd(tf.reshape(argmax, [-1, 1]), tf.reshape(values, [-1]), [padded_size])
    restored = tf.reshape(flat, padded.shape)[:, :height, :width, :]
    return pooled.numpy(), restored.numpy(), argmax.numpy()


def _inputs(seed, shape, ties):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: most windows hold ties, often the whole window
        return rng.integers(0, 3, shape).astype("float32")
    return rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize(
    "shape",
    [(1, 4, 6, 3), (2, 5, 7, 4), (1, 1, 1, 2), (1, 9, 2, 1), (3, 45, 60, 2), (1, 23, 30, 5)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_equal_to_argmax_unpooling(shape, ties):
    x = _inputs(sum(shape) + ties, shape, ties)
    pooled, mask = MaxPoolingWithMask()(x)
    pooled, mask = np.asarray(pooled), np.asarray(mask)
    values = np.random.default_rng(1).normal(size=pooled.shape).astype("float32") + 5.0
    ref_pooled, ref_restored, _ = _reference_unpool(x, values)

    np.testing.assert_array_equal(pooled, ref_pooled)
    assert mask.shape == x.shape and set(np.unique(mask)) <= {0.0, 1.0}
    # One position per window: the mask sums to the number of windows.
    assert mask.sum() == pooled.size
    # Unpooling the pooled map itself: x at the argmax positions, zero elsewhere.
    unpooled = np.asarray(MaxUnpooling()([pooled, mask]))
    np.testing.assert_array_equal(unpooled, np.where(mask > 0, x, 0.0))
    np.testing.assert_array_equal(unpooled, _reference_unpool(x, ref_pooled)[1])
    # Unpooling other values (a decoder's): the same positions as tf's argmax + scatter.
    np.testing.assert_array_equal(np.asarray(MaxUnpooling()([values, mask])), ref_restored)
    if ties and shape[1] * shape[2] >= 4:  # ties really happened: more maxima than windows
        window_max = np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)[:, : shape[1], : shape[2]]
        assert (x == window_max).sum() > pooled.size


def test_ties_break_at_the_first_window_position():
    x = np.zeros((1, 2, 2, 1), "float32")  # all four positions tie
    _, mask = MaxPoolingWithMask()(x)
    np.testing.assert_array_equal(np.asarray(mask)[0, :, :, 0], [[1, 0], [0, 0]])
    x = np.array([[0, 1], [1, 1]], "float32").reshape(1, 2, 2, 1)
    _, mask = MaxPoolingWithMask()(x)
    np.testing.assert_array_equal(np.asarray(mask)[0, :, :, 0], [[0, 1], [0, 0]])
    _, _, argmax = _reference_unpool(x, np.ones((1, 1, 1, 1), "float32"))
    assert int(argmax.reshape(-1)[0]) == 1


def test_ceil_mode_padding_never_wins():
    x = np.full((1, 3, 3, 1), -1e30, "float32")  # very negative real values
    pooled, mask = MaxPoolingWithMask()(x)
    assert pooled.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(pooled), np.full((1, 2, 2, 1), -1e30, "float32"))
    np.testing.assert_array_equal(np.asarray(mask)[0, :, :, 0], [[1, 0, 1], [0, 0, 0], [1, 0, 1]])


def test_gradient_flows_to_the_argmax_only():
    x = tf.constant(_inputs(3, (1, 5, 7, 2), ties=False))
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled, mask = MaxPoolingWithMask()(x)
        loss = tf.reduce_sum(MaxUnpooling()([pooled * 2.0, mask]))
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_array_equal(grad, 2.0 * np.asarray(mask))


def test_symbolic_shapes_and_dynamic_sizes(tmp_path):
    inputs = keras.Input((None, None, 3))
    pooled, mask = MaxPoolingWithMask(name="pool")(inputs)
    outputs = MaxUnpooling(name="unpool")([pooled, mask])
    assert tuple(pooled.shape) == (None, None, None, 3) and tuple(outputs.shape) == tuple(
        inputs.shape
    )
    model = keras.Model(inputs, outputs)
    fixed = keras.Input((45, 61, 3))
    p, m = MaxPoolingWithMask()(fixed)
    assert tuple(p.shape) == (None, 23, 31, 3) and tuple(m.shape) == (None, 45, 61, 3)
    path = tmp_path / "unpool.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    x = _inputs(0, (1, 7, 9, 3), ties=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


def test_tflite_builtin_ops_only(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from keras_deeplab.tflite_file import op_counts

    inputs = keras.Input((9, 13, 3), batch_size=1)
    pooled, mask = MaxPoolingWithMask()(inputs)
    outputs = MaxUnpooling()([pooled * 3.0, mask])
    model = keras.Model(inputs, outputs)

    @tf.function(input_signature=[tf.TensorSpec([1, 9, 13, 3], tf.float32)])
    def serve(x):
        return model(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    path = tmp_path / "unpool.tflite"
    path.write_bytes(content)
    ops = op_counts(content=content)
    assert not any(op.startswith("CUSTOM") or op.startswith("FLEX") for op in ops), ops
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    x = _inputs(5, (1, 9, 13, 3), ties=True)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(y, np.asarray(model(x)))
