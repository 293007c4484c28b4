"""Tests of the modified aligned Xception backbone (official `core/xception.py`)."""

import functools

import keras
import numpy as np
import pytest

from keras_deeplab.backbones.xception import XceptionBackbone

SIZES = [(65, 97), (96, 128)]  # odd and even


def _fixed_pad_conv_out(n, kernel=3, stride=2, rate=1):
    """Spatial size after official fixed padding + VALID conv."""
    effective = kernel + (kernel - 1) * (rate - 1)
    return (n + (effective - 1) - effective) // stride + 1


def _size_at(n, stride):
    """Size after log2(stride) stride-2 3x3 convs with fixed padding."""
    while stride > 1:
        n = _fixed_pad_conv_out(n)
        stride //= 2
    return n


def _built(depth=65, output_stride=16, multi_grid=None):
    """One build per argument set for the tests that only read the model (suite time: an
    Xception-65 build takes ~4 s on the 2-core CI machine). Tests that change weights build
    their own."""
    return _build(depth, output_stride, multi_grid)


@functools.cache
def _build(depth, output_stride, multi_grid):
    return XceptionBackbone(output_stride=output_stride, multi_grid=multi_grid, depth=depth)


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _depthwise(model, unit, i):
    return model.get_layer(f"{unit}_xception_module_separable_conv{i}_depthwise")


# ---------------------------------------------------------------- parameters


def test_xception65_parameter_count_matches_reference():
    model = _built(depth=65)
    assert model.count_params() == 38_052_512
    assert _trainable_count(model) == 37_867_312


@pytest.mark.parametrize(
    "depth, total, trainable",
    [(41, 25_035_872, 24_920_560), (71, 40_488_712, 40_289_736)],
)
def test_xception41_71_parameter_counts(depth, total, trainable):
    model = _built(depth=depth)
    assert model.count_params() == total
    assert _trainable_count(model) == trainable


# ---------------------------------------------------------------- taps


# suite time: each ~5 s; the default run keeps one case per depth and per output stride
_SLOW_TAPS = {(65, 32), (71, 32)}


@pytest.mark.parametrize(
    "depth, output_stride",
    [
        pytest.param(d, s, marks=pytest.mark.slow) if (d, s) in _SLOW_TAPS else (d, s)
        for d, s in [(65, 8), (65, 16), (65, 32), (41, 8), (71, 16), (71, 32)]
    ],
)
def test_tap_strides_and_channels(depth, output_stride):
    model = _built(depth, output_stride, (1, 2, 4))
    expected_strides = {"stride_4": 4, "final": output_stride}
    expected_channels = {"stride_4": 256, "final": 2048}
    if output_stride > 8:
        expected_strides["stride_8"] = 8
        expected_channels["stride_8"] = 728
    if output_stride > 16:
        expected_strides["stride_16"] = 16
        expected_channels["stride_16"] = 1024
    assert model.feature_channels == expected_channels
    assert model.output_stride == output_stride
    for h, w in SIZES:
        out = model(np.random.default_rng(0).normal(size=(2, h, w, 3)).astype("float32"))
        assert set(out) == set(expected_strides)
        for key, stride in expected_strides.items():
            expected = (2, _size_at(h, stride), _size_at(w, stride), expected_channels[key])
            assert tuple(out[key].shape) == expected, key


def test_final_size_is_ceil_of_size_over_stride():
    # Fixed padding + VALID gives ceil(n / 2) per stride-2 stage.
    for n in (33, 64, 65, 96, 97, 128, 129):
        for os_ in (8, 16, 32):
            assert _size_at(n, os_) == -(-n // os_)


def test_stride_4_tap_is_pre_activation_pointwise_bn_output():
    model = _built(depth=65, output_stride=16)
    layer = model.get_layer(
        "entry_flow_block2_unit_1_xception_module_separable_conv2_pointwise_BatchNorm"
    )
    assert isinstance(layer, keras.layers.BatchNormalization)
    # Same graph tensor.
    assert model.output["stride_4"] is layer.output
    # Same values as a sub-model ending at that layer.
    sub = keras.Model(model.input, layer.output)
    x = np.random.default_rng(1).normal(size=(1, 65, 65, 3)).astype("float32")
    tap = keras.ops.convert_to_numpy(model(x)["stride_4"])
    np.testing.assert_allclose(tap, keras.ops.convert_to_numpy(sub(x)), rtol=1e-6, atol=1e-6)
    # Pre-activation: no ReLU applied, so negative values are present.
    assert (tap < 0).mean() > 0.1


def test_xception71_stride_4_tap_is_block3():
    model = _built(depth=71, output_stride=32)
    name = "entry_flow_block3_unit_1_xception_module_separable_conv2_pointwise_BatchNorm"
    assert model.output["stride_4"] is model.get_layer(name).output
    name8 = "entry_flow_block5_unit_1_xception_module_separable_conv2_pointwise_BatchNorm"
    assert model.output["stride_8"] is model.get_layer(name8).output
    name16 = "exit_flow_block1_unit_1_xception_module_separable_conv2_pointwise_BatchNorm"
    assert model.output["stride_16"] is model.get_layer(name16).output


# ---------------------------------------------------------------- atrous rates


def _rates_and_strides(model, unit):
    layers = [_depthwise(model, unit, i) for i in (1, 2, 3)]
    return [lyr.dilation_rate[0] for lyr in layers], [lyr.strides[0] for lyr in layers]


def test_dilation_rates_output_stride_16_multi_grid():
    model = _built(65, 16, (1, 2, 4))
    assert _rates_and_strides(model, "entry_flow_block3_unit_1") == ([1, 1, 1], [1, 1, 2])
    assert _rates_and_strides(model, "middle_flow_block1_unit_16") == ([1, 1, 1], [1, 1, 1])
    assert _rates_and_strides(model, "exit_flow_block1_unit_1") == ([1, 1, 1], [1, 1, 1])
    assert _rates_and_strides(model, "exit_flow_block2_unit_1") == ([2, 4, 8], [1, 1, 1])
    assert model.get_layer("exit_flow_block1_unit_1_xception_module_shortcut").strides == (1, 1)


def test_dilation_rates_output_stride_8_multi_grid():
    model = _built(65, 8, (1, 2, 4))
    assert _rates_and_strides(model, "entry_flow_block2_unit_1") == ([1, 1, 1], [1, 1, 2])
    assert _rates_and_strides(model, "entry_flow_block3_unit_1") == ([1, 1, 1], [1, 1, 1])
    for u in (1, 16):
        assert _rates_and_strides(model, f"middle_flow_block1_unit_{u}") == ([2, 2, 2], [1] * 3)
    assert _rates_and_strides(model, "exit_flow_block1_unit_1") == ([2, 2, 2], [1, 1, 1])
    assert _rates_and_strides(model, "exit_flow_block2_unit_1") == ([4, 8, 16], [1, 1, 1])
    for unit in ("entry_flow_block3_unit_1", "exit_flow_block1_unit_1"):
        shortcut = model.get_layer(f"{unit}_xception_module_shortcut")
        assert shortcut.strides == (1, 1)


def test_dilation_rates_output_stride_32_and_default_multi_grid():
    model = _built(65, 32, (1, 2, 4))
    assert _rates_and_strides(model, "exit_flow_block1_unit_1") == ([1, 1, 1], [1, 1, 2])
    assert _rates_and_strides(model, "exit_flow_block2_unit_1") == ([1, 2, 4], [1, 1, 1])
    model = _built(depth=41, output_stride=16)
    assert _rates_and_strides(model, "exit_flow_block2_unit_1") == ([2, 2, 2], [1, 1, 1])


# ---------------------------------------------------------------- structure


def test_strided_convs_use_fixed_padding_then_valid():
    model = _built(depth=65, output_stride=32)
    stem_pad = model.get_layer("entry_flow_conv1_1_pad")
    assert stem_pad.padding == ((1, 1), (1, 1))
    assert model.get_layer("entry_flow_conv1_1").input is stem_pad.output
    assert model.get_layer("entry_flow_conv1_1").padding == "valid"
    assert model.get_layer("entry_flow_conv1_2").padding == "same"
    strided = [
        lyr
        for lyr in model.layers
        if isinstance(lyr, keras.layers.DepthwiseConv2D) and lyr.strides != (1, 1)
    ]
    assert len(strided) == 4  # entry blocks 1-3 and exit block1 at OS32
    for lyr in strided:
        assert lyr.padding == "valid"
        pad = model.get_layer(f"{lyr.name}_pad")
        assert lyr.input is pad.output
        assert pad.padding == ((1, 1), (1, 1))


def test_stem_fixed_padding_alignment_on_even_input():
    # Fixed padding pads (1, 1); Keras/TF 'same' would pad (0, 1) on even inputs.
    model = XceptionBackbone(depth=41)
    conv = model.get_layer("entry_flow_conv1_1")
    sub = keras.Model(model.input, conv.output)
    kernel = np.zeros(conv.kernel.shape, "float32")
    kernel[..., 0, 0] = 1.0
    conv.kernel.assign(kernel)
    x = np.zeros((1, 96, 128, 3), "float32")
    x[0, 2, 2, 0] = 1.0
    y = keras.ops.convert_to_numpy(sub(x))[0, :, :, 0]
    assert y.shape == (48, 64)
    assert np.argwhere(y).tolist() == [[1, 1]]


def test_module_activation_placement_and_skips():
    model = _built(depth=65, output_stride=16)

    def get(name):
        return model.get_layer(name)

    mid = "middle_flow_block1_unit_1_xception_module"
    # ReLU on the input of each separable conv, none inside.
    assert (
        get(f"{mid}_separable_conv1_depthwise").input is get(f"{mid}_separable_conv1_relu").output
    )
    assert (
        get(f"{mid}_separable_conv1_relu").input
        is get("entry_flow_block3_unit_1_xception_module_add").output
    )
    assert (
        get(f"{mid}_separable_conv1_pointwise").input
        is get(f"{mid}_separable_conv1_depthwise_BatchNorm").output
    )
    assert (
        get(f"{mid}_separable_conv2_relu").input
        is get(f"{mid}_separable_conv1_pointwise_BatchNorm").output
    )
    # 'sum' skip adds the un-activated unit input; no ReLU after the add.
    add_inputs = get(f"{mid}_add").input
    assert add_inputs[0] is get(f"{mid}_separable_conv3_pointwise_BatchNorm").output
    assert add_inputs[1] is get("entry_flow_block3_unit_1_xception_module_add").output
    # 'conv' skip: 1x1 conv + BN on the un-activated input.
    e2 = "entry_flow_block2_unit_1_xception_module"
    assert get(f"{e2}_shortcut").input is get("entry_flow_block1_unit_1_xception_module_add").output
    assert get(f"{e2}_add").input[1] is get(f"{e2}_shortcut_BatchNorm").output
    # exit_flow/block2: no pre-ReLU, ReLU after both BNs, no skip.
    x2 = "exit_flow_block2_unit_1_xception_module"
    assert (
        get(f"{x2}_separable_conv1_depthwise").input
        is get("exit_flow_block1_unit_1_xception_module_add").output
    )
    for i in (1, 2, 3):
        sep = f"{x2}_separable_conv{i}"
        assert get(f"{sep}_depthwise_relu").input is get(f"{sep}_depthwise_BatchNorm").output
        assert get(f"{sep}_pointwise").input is get(f"{sep}_depthwise_relu").output
        assert get(f"{sep}_pointwise_relu").input is get(f"{sep}_pointwise_BatchNorm").output
    assert model.output["final"] is get(f"{x2}_separable_conv3_pointwise_relu").output
    names = {lyr.name for lyr in model.layers}
    assert f"{x2}_shortcut" not in names and f"{x2}_add" not in names
    assert f"{mid}_shortcut" not in names


@pytest.mark.parametrize("depth, middle_units", [(41, 8), (65, 16)])
def test_names_units_and_batchnorm_settings(depth, middle_units):
    model = _built(depth=depth)
    names = {lyr.name for lyr in model.layers}
    for name in (
        "entry_flow_conv1_1",
        "entry_flow_conv1_1_BatchNorm",
        "entry_flow_conv1_2_BatchNorm",
        "entry_flow_block1_unit_1_xception_module_separable_conv1_depthwise",
        "entry_flow_block1_unit_1_xception_module_separable_conv1_depthwise_BatchNorm",
        "entry_flow_block1_unit_1_xception_module_separable_conv1_pointwise",
        "entry_flow_block1_unit_1_xception_module_separable_conv1_pointwise_BatchNorm",
        "entry_flow_block3_unit_1_xception_module_shortcut",
        "entry_flow_block3_unit_1_xception_module_shortcut_BatchNorm",
        "exit_flow_block1_unit_1_xception_module_shortcut_BatchNorm",
        f"middle_flow_block1_unit_{middle_units}_xception_module_separable_conv3_pointwise",
    ):
        assert name in names, name
    assert f"middle_flow_block1_unit_{middle_units + 1}_xception_module_add" not in names
    assert "entry_flow_block4_unit_1_xception_module_add" not in names
    bns = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    assert bns and all(b.momentum == 0.9997 and b.epsilon == 1e-3 for b in bns)
    convs = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.Conv2D)]
    assert all(not c.use_bias for c in convs)
    for c in convs:
        assert f"{c.name}_BatchNorm" in names, c.name
    dws = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.DepthwiseConv2D)]
    assert len(dws) == 3 * (3 + middle_units + 2)
    assert all(d.kernel_size == (3, 3) and d.depth_multiplier == 1 for d in dws)


def test_xception71_entry_flow_strides():
    model = _built(depth=71, output_stride=16)
    strides = [_rates_and_strides(model, f"entry_flow_block{b}_unit_1")[1][2] for b in range(1, 6)]
    assert strides == [2, 1, 2, 1, 2]
    assert model.get_layer("entry_flow_block4_unit_1_xception_module_shortcut").filters == 728


def test_config_round_trip():
    model = _built(depth=41, output_stride=8)
    # The config holds the arguments (a Backbone rebuilds its graph), not the layer graph.
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(clone) is type(model) and clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(2).normal(size=(1, 33, 47, 3)).astype("float32")
    a, b = model(x), clone(x)
    for key in a:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a[key]), keras.ops.convert_to_numpy(b[key]), atol=1e-5
        )


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"output_stride": 4}, "output_stride"),
        ({"output_stride": 12}, "output_stride"),
        ({"multi_grid": (1, 2)}, "multi_grid"),
        ({"multi_grid": (0, 1, 1)}, "multi_grid"),
        ({"input_shape": (None, None, 4)}, "3 channels"),
        ({"input_shape": (None, None, 1)}, "3 channels"),
        ({"depth": 50}, "depth"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XceptionBackbone(**kwargs)
