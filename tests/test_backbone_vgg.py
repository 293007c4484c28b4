"""DeepLab v1/v2 VGG-16 trunk."""

import keras
import numpy as np
import pytest

from keras_deeplab.backbones.vgg import VGG16Backbone

RNG = np.random.default_rng(0)


def _weight_shapes(model):
    return {w.path: tuple(w.shape) for w in model.weights}


def test_weights_match_keras_applications():
    ours = VGG16Backbone()
    ref = keras.applications.VGG16(include_top=False, weights=None)
    assert _weight_shapes(ours) == _weight_shapes(ref)
    assert ours.count_params() == ref.count_params() == 14_714_688


def test_block1_matches_keras_applications():
    ref = keras.applications.VGG16(include_top=False, weights=None, input_shape=(33, 47, 3))
    ours = VGG16Backbone((33, 47, 3))
    for layer in ref.layers:
        if layer.weights:
            ours.get_layer(layer.name).set_weights(layer.get_weights())
    x = RNG.standard_normal((2, 33, 47, 3)).astype("float32")

    def upto(model):
        return keras.Model(model.input, model.get_layer("block1_conv2").output)

    expected, got = upto(ref)(x).numpy(), upto(ours)(x).numpy()
    assert expected.shape == got.shape == (2, 33, 47, 64)
    assert np.abs(expected).max() > 0.1
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("size, final", [(65, 9), (64, 8), (33, 5)])
def test_output_stride_8(size, final):
    model = VGG16Backbone((None, None, 3))
    out = model(RNG.standard_normal((1, size, size + 2, 3)).astype("float32"))
    assert set(out) == {"stride_4", "final"}
    assert out["final"].shape == (1, final, -(-(size + 2) // 8), 512)
    assert out["stride_4"].shape == (1, -(-size // 4), -(-(size + 2) // 4), 128)


def test_deeplab_layout_at_output_stride_8():
    model = VGG16Backbone(output_stride=8)
    for b, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for c in range(1, convs + 1):
            layer = model.get_layer(f"block{b}_conv{c}")
            rate = 2 if b == 5 else 1
            assert layer.dilation_rate == (rate, rate)
            assert layer.kernel_size == (3, 3) and layer.use_bias and layer.padding == "same"
    strides = [model.get_layer(f"pool{i}").strides for i in range(1, 6)]
    assert strides == [(2, 2)] * 3 + [(1, 1)] * 2
    assert {model.get_layer(f"pool{i}").pool_size for i in range(1, 6)} == {(3, 3)}
    assert model.output["final"]._keras_history.operation.name == "pool5"
    assert model.output["stride_4"]._keras_history.operation.name == "pool2"


@pytest.mark.parametrize(
    "output_stride, taps, conv5_rate",
    [
        (16, {"stride_4": 17, "stride_8": 9, "final": 5}, 1),
        (32, {"stride_4": 17, "stride_8": 9, "stride_16": 5, "final": 3}, 1),
    ],
)
def test_other_output_strides(output_stride, taps, conv5_rate):
    model = VGG16Backbone((65, 65, 3), output_stride=output_stride)
    assert {k: v.shape[1] for k, v in model.output.items()} == taps
    assert model.get_layer("block5_conv1").dilation_rate == (conv5_rate, conv5_rate)
    assert model.get_layer("pool4").strides == ((2, 2) if output_stride > 8 else (1, 1))
    assert model.get_layer("pool5").strides == ((2, 2) if output_stride == 32 else (1, 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"multi_grid": (1, 2, 4)}, "multi_grid"),
        ({"output_stride": 4}, "output_stride"),
        ({"input_shape": (65, 65, 4)}, "3 channels"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VGG16Backbone(**kwargs)
