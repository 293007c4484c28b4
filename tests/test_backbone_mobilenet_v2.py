"""MobileNetV2 backbone against the official DeepLab graph (TFLite dm 0.5, OS 8) and §2.2 counts."""

import math

import keras
import numpy as np
import pytest
from official_tflite import (
    keras_kernel_shape,
    keras_layer_name,
    official_convs,
    official_tflite_dir,
    parse_model_structure,
    to_keras_kernel,
)
from PIL import Image

from keras_deeplab.backbones.mobilenet_v2 import (
    BN_EPSILON,
    BN_MOMENTUM,
    MobileNetV2Backbone,
    make_divisible,
    scaled_depth,
)
from keras_deeplab.layers import Conv2D, DepthwiseConv2D

SCOPE = "MobilenetV2/"


def _conv_layers(model):
    return [layer for layer in model.layers if isinstance(layer, (Conv2D, DepthwiseConv2D))]


@pytest.fixture(scope="module")
def dm05_os8():
    return MobileNetV2Backbone(output_stride=8, depth_multiplier=0.5)


@pytest.fixture(scope="module")
def official_backbone_convs():
    official_tflite_dir()
    return official_convs(weight_prefix=SCOPE)


def test_channel_rounding_follows_deeplab():
    # dm 1.0: divisible_by = min_depth = 8; otherwise 1 (not keras.applications' rounding).
    assert [scaled_depth(c, 1.0) for c in (32, 16, 24, 320)] == [32, 16, 24, 320]
    assert [scaled_depth(c, 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [
        16,
        8,
        12,
        16,
        32,
        48,
        80,
        160,
    ]
    assert scaled_depth(32, 0.35) == 11
    assert make_divisible(12 * 6, 8) == 72
    assert make_divisible(66, 8) == 64  # rounds to nearest multiple, within 10%
    assert make_divisible(1.4, 1) == 2  # never more than 10% below


def test_dm05_os8_convs_match_official_tflite(dm05_os8, official_backbone_convs):
    official = official_backbone_convs
    convs = _conv_layers(dm05_os8)
    assert len(official) == 51  # 34 CONV_2D + 17 DEPTHWISE_CONV_2D in the backbone
    assert [layer.name for layer in convs] == [keras_layer_name(c.weight, SCOPE) for c in official]
    for layer, ref in zip(convs, official, strict=True):
        assert isinstance(layer, DepthwiseConv2D) == (ref.op == "DEPTHWISE_CONV_2D"), layer.name
        assert tuple(layer.kernel.shape) == keras_kernel_shape(ref), layer.name
        assert tuple(layer.strides) == ref.stride, layer.name
        assert tuple(layer.dilation_rate) == ref.dilation, layer.name
        assert layer.padding == "same" and not layer.use_bias, layer.name


def test_dm05_os8_strides_and_rates(dm05_os8):
    depthwise = {
        layer.name.removesuffix("_depthwise"): (layer.strides[0], layer.dilation_rate[0])
        for layer in _conv_layers(dm05_os8)
        if isinstance(layer, DepthwiseConv2D)
    }
    assert dm05_os8.get_layer("Conv").strides == (2, 2)
    strided = {name for name, (stride, _) in depthwise.items() if stride == 2}
    assert strided == {"expanded_conv_1", "expanded_conv_3"}
    assert depthwise["expanded_conv_6"] == (1, 1)
    for i in range(7, 14):
        assert depthwise[f"expanded_conv_{i}"] == (1, 2)
    for i in range(14, 17):
        assert depthwise[f"expanded_conv_{i}"] == (1, 4)


def test_dm05_os8_bn_activations_and_adds_match_official(dm05_os8):
    ops = [op for op in parse_model_structure() if op.outputs[0][0].startswith(SCOPE)]
    for op in ops:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            name = keras_layer_name(op.inputs[1][0], SCOPE)
            bn = dm05_os8.get_layer(f"{name}_BatchNorm")
            assert bn.momentum == BN_MOMENTUM and bn.epsilon == BN_EPSILON
            assert bn.center and bn.scale
            has_relu6 = any(layer.name == f"{name}_Relu6" for layer in dm05_os8.layers)
            assert has_relu6 == (op.options["act"] == "RELU6"), name
    official_adds = [keras_layer_name(op.outputs[0][0], SCOPE) for op in ops if op.op == "ADD"]
    adds = [layer.name for layer in dm05_os8.layers if isinstance(layer, keras.layers.Add)]
    assert len(official_adds) == 10
    # Official residual outputs are `expanded_conv_N/add`; ours are layers `expanded_conv_N_add`.
    assert adds == [name + "_add" for name in official_adds]


def test_dm05_parameter_count_matches_official(dm05_os8):
    # Official folded weights: conv kernels + one bias per BN channel (BN folded in TFLite).
    official = 0
    for op in parse_model_structure():
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D") and op.inputs[1][0].startswith(SCOPE):
            official += sum(math.prod(shape) for _, shape in op.inputs[1:])
    kernels = sum(math.prod(layer.weights[0].shape) for layer in _conv_layers(dm05_os8))
    betas = sum(
        layer.beta.shape[0]
        for layer in dm05_os8.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert kernels + betas == official


def test_dm1_parameter_count():
    model = MobileNetV2Backbone()
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert model.count_params() == 1_843_264
    assert trainable == 1_811_712
    assert model.feature_channels == {"stride_4": 144, "stride_8": 192, "final": 320}
    os32 = MobileNetV2Backbone(input_shape=(33, 33, 3), output_stride=32, depth_multiplier=0.5)
    assert os32.feature_channels == {"stride_4": 72, "stride_8": 96, "stride_16": 288, "final": 160}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_tap_strides_odd_and_even_sizes(output_stride):
    model = MobileNetV2Backbone(output_stride=output_stride)
    assert model.output_stride == output_stride
    # stride_8 / stride_16 only below output_stride (the package-wide tap rule).
    expected_taps = {"stride_4": 4, "final": output_stride}
    expected_taps.update({f"stride_{s}": s for s in (8, 16) if s < output_stride})
    assert set(model.output) == set(expected_taps)
    for height, width in ((65, 48), (33, 97)):
        outputs = model(np.zeros((1, height, width, 3), "float32"), training=False)
        for tap, stride in expected_taps.items():
            assert tuple(outputs[tap].shape) == (
                1,
                math.ceil(height / stride),
                math.ceil(width / stride),
                model.feature_channels[tap],
            ), (tap, height, width)


def test_taps_are_depthwise_outputs():
    model = MobileNetV2Backbone(input_shape=(65, 65, 3), output_stride=32)
    layers = {
        "stride_4": "expanded_conv_2_depthwise_Relu6",
        "stride_8": "expanded_conv_5_depthwise_Relu6",
        "stride_16": "expanded_conv_12_depthwise_Relu6",
        "final": "expanded_conv_16_project_BatchNorm",
    }
    probe = keras.Model(
        model.input, {tap: model.get_layer(name).output for tap, name in layers.items()}
    )
    x = np.random.default_rng(0).uniform(-1, 1, (1, 65, 65, 3)).astype("float32")
    got, want = model(x), probe(x)
    for tap in layers:
        np.testing.assert_array_equal(np.asarray(got[tap]), np.asarray(want[tap]))


def test_static_shape_and_name():
    model = MobileNetV2Backbone(input_shape=(129, 129, 3), output_stride=8, depth_multiplier=0.5)
    assert model.name == "mobilenet_v2_dm05"
    assert tuple(model.output["final"].shape) == (None, 17, 17, 160)
    assert tuple(model.output["stride_4"].shape) == (None, 33, 33, 72)
    assert MobileNetV2Backbone(name="mnv2").name == "mnv2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"output_stride": 12}, "output_stride"),
        ({"multi_grid": (1, 2, 4)}, "multi_grid"),
        ({"depth_multiplier": 0}, "depth_multiplier"),
        ({"depth_multiplier": -0.5}, "depth_multiplier"),
        ({"depth_multiplier": "half"}, "depth_multiplier"),
        ({"input_shape": (None, None, 1)}, "3 channels"),
        ({"input_shape": (64, 64)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileNetV2Backbone(**kwargs)


def test_numerical_parity_with_official_tflite(dm05_os8):
    """Official folded weights (BN as identity + bias) reproduce the TFLite backbone output."""
    folder = official_tflite_dir()
    weights = np.load(folder / "weights_tflite_layout.npz")
    golden = np.load(folder / "reference" / "golden_tensors.npz")
    for conv in official_convs(weight_prefix=SCOPE):
        name = keras_layer_name(conv.weight, SCOPE)
        bias_name = conv.weight.rsplit("/", 1)[0] + (
            "/depthwise_bias" if conv.op == "DEPTHWISE_CONV_2D" else "/Conv2D_bias"
        )
        dm05_os8.get_layer(name).set_weights([to_keras_kernel(weights[conv.weight])])
        bias = weights[bias_name]
        ones = np.ones_like(bias)
        dm05_os8.get_layer(f"{name}_BatchNorm").set_weights(
            [ones, bias, np.zeros_like(bias), ones - BN_EPSILON]
        )
    image = np.asarray(Image.open(folder / "reference" / "2007_000033_input257.png").convert("RGB"))
    x = ((image.astype("float32") - 127.5) / 127.5)[None]
    got = np.asarray(dm05_os8(x, training=False)["final"])
    want = golden[
        "2007_000033/MobilenetV2/expanded_conv_16/project/BatchNorm/FusedBatchNorm"
    ].astype("float32")
    assert got.shape == want.shape == (1, 33, 33, 160)
    # Golden tensors are stored as float16.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
