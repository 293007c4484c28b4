"""ResNet backbones: official beta layout and the keras.applications/Caffe layout."""

import keras
import numpy as np
import pytest
from conftest import randomize_batch_norms

from keras_deeplab.backbones.resnet import ResNetBackbone

RNG = np.random.default_rng(0)


def _images(h, w, batch=1):
    return RNG.standard_normal((batch, h, w, 3)).astype("float32")


def _source_layer(tensor):
    return tensor._keras_history.operation.name


def _weight_shapes(model):
    return {w.path: tuple(w.shape) for w in model.weights}


def _conv2_rates(model, block, units):
    return [
        model.get_layer(f"block{block}_unit_{u}_bottleneck_v1_conv2").dilation_rate[0]
        for u in range(1, units + 1)
    ]


# ----------------------------------------------------------------------------- beta


@pytest.mark.parametrize(
    "depth, total, trainable",
    # Reference §2.2 DeepLabV3+ resnet_v1_{50,101}_beta totals minus the head
    # (ASPP sep + decoder + 21-class logits: 3,205,701 total, 3,188,101 trainable).
    [(50, 23_685_312, 23_631_808), (101, 42_729_664, 42_623_936)],
)
def test_beta_parameter_counts(depth, total, trainable):
    model = ResNetBackbone(depth=depth, flavour="beta", multi_grid=(1, 2, 4))
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    assert model.feature_channels == {"stride_4": 256, "stride_8": 512, "final": 2048}


@pytest.mark.parametrize(
    "output_stride, taps",
    [
        (8, {"stride_4": 17, "final": 9}),
        (16, {"stride_4": 17, "stride_8": 9, "final": 5}),
        (32, {"stride_4": 17, "stride_8": 9, "stride_16": 5, "final": 3}),
    ],
)
def test_beta_taps(output_stride, taps):
    model = ResNetBackbone((65, 65, 3), output_stride=output_stride, depth=101, flavour="beta")
    assert model.output_stride == output_stride
    assert {k: v.shape[1] for k, v in model.output.items()} == taps
    # Official decoder end points: pre-add, pre-ReLU conv3 BN outputs.
    expected = {
        "stride_4": "block1_unit_2_bottleneck_v1_conv3_BatchNorm",
        "stride_8": "block2_unit_3_bottleneck_v1_conv3_BatchNorm",
        "stride_16": "block3_unit_22_bottleneck_v1_conv3_BatchNorm",
        "final": "block4_unit_3_bottleneck_v1",
    }
    for key, tensor in model.output.items():
        assert _source_layer(tensor) == expected[key]


def test_beta_structure_names_and_bn():
    model = ResNetBackbone(depth=50, flavour="beta")
    for name, filters, kernel, stride in [
        ("conv1_1", 64, 3, 2),
        ("conv1_2", 64, 3, 1),
        ("conv1_3", 128, 3, 1),
        ("block1_unit_1_bottleneck_v1_shortcut", 256, 1, 1),
        ("block1_unit_3_bottleneck_v1_conv2", 64, 3, 2),
        ("block3_unit_6_bottleneck_v1_conv3", 1024, 1, 1),
    ]:
        layer = model.get_layer(name)
        assert (layer.filters, layer.kernel_size[0], layer.strides[0]) == (filters, kernel, stride)
        assert not layer.use_bias
    # Strided convs use the official fixed padding + VALID.
    assert model.get_layer("conv1_1").padding == "valid"
    assert model.get_layer("conv1_1_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("block2_unit_4_bottleneck_v1_conv2").padding == "valid"
    assert model.get_layer("block2_unit_3_bottleneck_v1_conv2").padding == "same"
    # Depth-preserving strided unit: 1x1 max-pool subsampling shortcut, no conv.
    pool = model.get_layer("block1_unit_3_bottleneck_v1_shortcut")
    assert isinstance(pool, keras.layers.MaxPooling2D) and pool.strides == (2, 2)
    assert model.get_layer("pool1").pool_size == (3, 3)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.name.endswith("_BatchNorm") for layer in bns)
    assert {(layer.momentum, layer.epsilon) for layer in bns} == {(0.95, 1e-5)}
    # 3 stem + 16 units x 3 convs + 4 projection shortcuts.
    assert len(bns) == 3 + 16 * 3 + 4


def test_beta_atrous_rates():
    model = ResNetBackbone(output_stride=16, multi_grid=(1, 2, 4), depth=50, flavour="beta")
    assert _conv2_rates(model, 3, 6) == [1] * 6
    assert model.get_layer("block3_unit_6_bottleneck_v1_conv2").strides == (1, 1)
    assert _conv2_rates(model, 4, 3) == [2, 4, 8]

    model = ResNetBackbone(output_stride=8, multi_grid=(1, 2, 4), depth=50, flavour="beta")
    assert _conv2_rates(model, 2, 4) == [1] * 4
    assert model.get_layer("block2_unit_4_bottleneck_v1_conv2").strides == (1, 1)
    assert _conv2_rates(model, 3, 6) == [2] * 6
    assert _conv2_rates(model, 4, 3) == [4, 8, 16]


def test_beta_atrous_equals_strided():
    """OS8/OS16 features subsampled equal the OS32 features (same weights)."""
    os32 = ResNetBackbone((None, None, 3), output_stride=32, multi_grid=(1, 2, 4), depth=50)
    randomize_batch_norms(os32)
    x = _images(50, 63)
    ref = os32(x, training=False)["final"].numpy()
    assert ref.shape == (1, 2, 2, 2048)
    for output_stride in (8, 16):
        model = ResNetBackbone(output_stride=output_stride, multi_grid=(1, 2, 4), depth=50)
        model.set_weights(os32.get_weights())
        out = model(x, training=False)["final"].numpy()
        assert out.shape == (1, -(-50 // output_stride), -(-63 // output_stride), 2048)
        step = 32 // output_stride
        np.testing.assert_allclose(out[:, ::step, ::step], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flavour", ["beta", "caffe"])
@pytest.mark.parametrize("size", [(33, 33), (64, 64), (47, 70)])
def test_any_input_size(flavour, size):
    model = ResNetBackbone(output_stride=16, depth=50, flavour=flavour)
    out = model(_images(*size), training=False)
    h, w = size
    assert out["final"].shape == (1, -(-h // 16), -(-w // 16), 2048)
    assert out["stride_4"].shape == (1, -(-h // 4), -(-w // 4), 256)
    assert np.isfinite(out["final"].numpy()).all()


# ---------------------------------------------------------------------------- caffe


@pytest.mark.parametrize(
    "depth, app", [(50, keras.applications.ResNet50), (101, keras.applications.ResNet101)]
)
def test_caffe_weights_match_keras_applications(depth, app):
    ours = ResNetBackbone(output_stride=8, depth=depth, flavour="caffe")
    ref = app(weights=None, include_top=False, input_shape=(65, 65, 3))
    assert _weight_shapes(ours) == _weight_shapes(ref)
    assert ours.count_params() == ref.count_params()


def _copy_by_name(src, dst):
    for layer in src.layers:
        if layer.weights:
            dst.get_layer(layer.name).set_weights(layer.get_weights())


def _compare_with_application(app, depth):
    ref = app(weights=None, include_top=False, input_shape=(65, 65, 3))
    randomize_batch_norms(ref)
    ours = ResNetBackbone((65, 65, 3), output_stride=32, depth=depth, flavour="caffe")
    _copy_by_name(ref, ours)
    x = _images(65, 65, batch=2)
    expected = ref(x, training=False).numpy()
    got = ours(x, training=False)["final"].numpy()
    assert got.shape == expected.shape == (2, 3, 3, 2048)
    assert np.abs(expected).max() > 0.1
    assert np.abs(got - expected).max() <= 1e-5


def test_caffe_resnet50_forward_matches_keras_applications():
    _compare_with_application(keras.applications.ResNet50, 50)


@pytest.mark.slow  # suite time: 8 s; ResNet-50's forward and ResNet-101's weights stay in the default run
def test_caffe_resnet101_forward_matches_keras_applications():
    _compare_with_application(keras.applications.ResNet101, 101)


def test_caffe_atrous_rates_deeplab_v2():
    model = ResNetBackbone(output_stride=8, depth=101, flavour="caffe")
    for stage, units, rate in [(2, 3, 1), (3, 4, 1), (4, 23, 2), (5, 3, 4)]:
        rates = [
            model.get_layer(f"conv{stage}_block{u}_2_conv").dilation_rate
            for u in range(1, 1 + units)
        ]
        assert rates == [(rate, rate)] * units
    assert model.get_layer("conv3_block1_1_conv").strides == (2, 2)
    for name in ("conv4_block1_1_conv", "conv4_block1_0_conv", "conv5_block1_1_conv"):
        assert model.get_layer(name).strides == (1, 1)

    model = ResNetBackbone(output_stride=16, multi_grid=(1, 2, 4), depth=50, flavour="caffe")
    assert model.get_layer("conv4_block1_1_conv").strides == (2, 2)
    assert model.get_layer("conv5_block1_0_conv").strides == (1, 1)
    rates = [model.get_layer(f"conv5_block{u}_2_conv").dilation_rate[0] for u in (1, 2, 3)]
    assert rates == [2, 4, 8]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {(layer.momentum, layer.epsilon) for layer in bns} == {(0.99, 1.001e-5)}


@pytest.mark.parametrize(
    "output_stride, taps",
    [
        (8, {"stride_4": ("conv2_block3_out", 17), "final": ("conv5_block3_out", 9)}),
        (
            32,
            {
                "stride_4": ("conv2_block3_out", 17),
                "stride_8": ("conv3_block4_out", 9),
                "stride_16": ("conv4_block6_out", 5),
                "final": ("conv5_block3_out", 3),
            },
        ),
    ],
)
def test_caffe_taps(output_stride, taps):
    model = ResNetBackbone((65, 65, 3), output_stride=output_stride, depth=50, flavour="caffe")
    got = {k: (_source_layer(v), v.shape[1]) for k, v in model.output.items()}
    assert got == taps


def test_caffe_atrous_equals_strided():
    """With the stride removed, all conv4/conv5 3x3s must use the new rate."""
    os32 = ResNetBackbone(output_stride=32, depth=50, flavour="caffe")
    randomize_batch_norms(os32)
    x = _images(49, 57)
    ref = os32(x, training=False)["final"].numpy()
    os8 = ResNetBackbone(output_stride=8, depth=50, flavour="caffe")
    os8.set_weights(os32.get_weights())
    out = os8(x, training=False)["final"].numpy()
    assert out.shape == (1, 7, 8, 2048)
    np.testing.assert_allclose(out[:, ::4, ::4], ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 34}, "depth"),
        ({"flavour": "v2"}, "flavour"),
        ({"output_stride": 4}, "output_stride"),
        ({"multi_grid": (1, 2)}, "multi_grid"),
        ({"input_shape": (65, 65, 1)}, "3 channels"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetBackbone(**kwargs)
