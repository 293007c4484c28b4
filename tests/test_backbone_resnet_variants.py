"""The torch-layout ResNets: torchvision (`resnet*_tv`) and the PSPNet/CSAIL deep stem (`resnet*_deep`)."""

import keras
import numpy as np
import pytest
from conftest import randomize_batch_norms

from keras_deeplab.backbones import get_backbone, preprocessing_mode, resolve_backbone_name
from keras_deeplab.backbones.resnet import stage_tap

RNG = np.random.default_rng(0)


def _images(h, w, batch=1):
    return RNG.standard_normal((batch, h, w, 3)).astype("float32")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _bn_channels(model):
    return sum(
        layer.moving_mean.shape[0]
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def _rates(model, stage, units):
    return [model.get_layer(f"layer{stage}_{u}_conv2").dilation_rate[0] for u in range(units)]


def _strides(model, stage):
    return (
        model.get_layer(f"layer{stage}_0_conv2").strides[0],
        model.get_layer(f"layer{stage}_0_downsample_0").strides[0],
    )


@pytest.mark.parametrize(
    "name, trainable",
    [
        # torchvision resnet50 / resnet101 without fc (25,557,032 / 44,549,160 with it).
        ("resnet50_tv", 23_508_032),
        ("resnet101_tv", 42_500_160),
        # seed_systems §8.1 / §9: CSAIL / semseg deep-stem ResNet-50; §6.3: ResNet-101.
        ("resnet50_deep", 23_631_808),
        ("resnet101_deep", 42_623_936),
        # seed_systems §9.1: mmseg ResNetV1c (stem 32-32-64), 104,544 below the deep stem.
        ("resnet50_v1c", 23_527_264),
    ],
)
def test_parameter_counts(name, trainable):
    model = get_backbone(name, input_shape=(33, 33, 3), output_stride=8)
    assert _trainable(model) == trainable
    # Keras total = torch count + BN moving mean and variance.
    assert model.count_params() == trainable + 2 * _bn_channels(model)
    assert preprocessing_mode(name) == "torch"


def test_names_mirror_torch_state_dict_and_bn():
    tv = get_backbone("resnet50_tv", output_stride=32)
    conv1 = tv.get_layer("conv1")
    assert (conv1.kernel_size, conv1.strides, conv1.use_bias) == ((7, 7), (2, 2), False)
    assert tv.get_layer("conv1_pad").padding == ((3, 3), (3, 3))  # torch padding=3
    for name in ("bn1", "layer1_0_downsample_0", "layer1_0_downsample_1", "layer4_2_bn3"):
        tv.get_layer(name)
    with pytest.raises(ValueError):
        tv.get_layer("layer1_1_downsample_0")  # identity shortcut
    assert tv.get_layer("maxpool").pool_size == (3, 3)
    assert tv.get_layer("maxpool_pad").padding == ((1, 1), (1, 1))
    # Stride on the 3x3 conv (torchvision v1.5), symmetric padding like torch.
    assert tv.get_layer("layer2_0_conv1").strides == (1, 1)
    assert tv.get_layer("layer2_0_conv2").strides == (2, 2)
    assert tv.get_layer("layer2_0_conv2_pad").padding == ((1, 1), (1, 1))
    norms = [layer for layer in tv.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {(bn.momentum, bn.epsilon) for bn in norms} == {(0.9, 1e-5)}
    assert len(norms) == 1 + 16 * 3 + 4

    deep = get_backbone("resnet50_deep", output_stride=32)
    for name, filters, stride in [("conv1", 64, 2), ("conv2", 64, 1), ("conv3", 128, 1)]:
        layer = deep.get_layer(name)
        assert (layer.filters, layer.kernel_size, layer.strides) == (filters, (3, 3), (stride,) * 2)
        deep.get_layer(name.replace("conv", "bn"))
    assert deep.get_layer("layer1_0_downsample_0").kernel.shape == (1, 1, 128, 256)


def test_dilation_rules():
    # torchvision replace_stride_with_dilation=[False, True, True]: first block of a
    # dilated stage at the previous dilation.
    tv = get_backbone("resnet101_tv", output_stride=8)
    assert _rates(tv, 2, 4) == [1] * 4 and _strides(tv, 2) == (2, 2)
    assert _rates(tv, 3, 23) == [1] + [2] * 22 and _strides(tv, 3) == (1, 1)
    assert _rates(tv, 4, 3) == [2, 4, 4] and _strides(tv, 4) == (1, 1)
    # semseg PSPNet: every 3x3 of layer3 at 2, of layer4 at 4; downsample stride 1.
    deep = get_backbone("resnet50_deep", output_stride=8)
    assert _rates(deep, 3, 6) == [2] * 6 and _strides(deep, 3) == (1, 1)
    assert _rates(deep, 4, 3) == [4] * 3 and _strides(deep, 4) == (1, 1)
    deep16 = get_backbone("resnet50_deep", output_stride=16, multi_grid=(1, 2, 4))
    assert _rates(deep16, 3, 6) == [1] * 6 and _strides(deep16, 3) == (2, 2)
    assert _rates(deep16, 4, 3) == [2, 4, 8]
    deep32 = get_backbone("resnet50_deep", output_stride=32)  # UperNet: undilated
    assert all(_rates(deep32, s, n) == [1] * n for s, n in [(2, 4), (3, 6), (4, 3)])
    assert [_strides(deep32, s) for s in (2, 3, 4)] == [(2, 2)] * 3


@pytest.mark.parametrize("name", ["resnet50_tv", "resnet50_deep"])
@pytest.mark.parametrize(
    "output_stride, taps",
    [
        (8, {"stride_4": 9, "layer2_stride_8": 5, "layer3_stride_8": 5, "final": 5}),
        (16, {"stride_4": 9, "stride_8": 5, "layer3_stride_16": 3, "final": 3}),
        (32, {"stride_4": 9, "stride_8": 5, "stride_16": 3, "final": 2}),
    ],
)
def test_taps(name, output_stride, taps):
    model = get_backbone(name, input_shape=(33, 47, 3), output_stride=output_stride)
    out = model(_images(33, 47), training=False)
    assert {k: v.shape[1] for k, v in out.items()} == taps
    assert out["final"].shape[2] == -(-47 // output_stride)
    channels = {"stride_4": 256, "final": 2048}
    for stage, c in ((2, 512), (3, 1024)):
        channels[stage_tap(stage, output_stride)] = c
    assert model.feature_channels == channels
    assert [i["stride"] for i in model.feature_info] == [
        min(s, output_stride) for s in (4, 8, 16)
    ] + [output_stride]


@pytest.mark.slow  # suite time: 10 s; the beta and Caffe ResNets' atrous-equals-strided checks stay
def test_torchvision_atrous_equals_strided():
    """torchvision's rule keeps OS8/OS16 features equal to the OS32 ones subsampled (same
    weights); the deep layout's first-block dilation does not (it is PSPNet's choice)."""
    x = _images(50, 63)
    for name, equal in (("resnet50_tv", True), ("resnet50_deep", False)):
        os32 = randomize_batch_norms(get_backbone(name, output_stride=32))
        ref = os32(x, training=False)["final"].numpy()
        assert ref.shape == (1, 2, 2, 2048)
        for output_stride in (8, 16):
            model = get_backbone(name, output_stride=output_stride)
            model.set_weights(os32.get_weights())
            out = model(x, training=False)["final"].numpy()
            step = 32 // output_stride
            close = np.allclose(out[:, ::step, ::step], ref, rtol=1e-4, atol=1e-4)
            assert close == equal, (name, output_stride)


def test_existing_names_unchanged_and_aliases():
    assert resolve_backbone_name("resnet50") == "resnet50"
    assert preprocessing_mode("resnet50") == "caffe"
    assert preprocessing_mode("resnet101_beta") == "symmetric"
    assert resolve_backbone_name("resnet101_torchvision") == "resnet101_tv"
    assert resolve_backbone_name("RESNET50_DEEP") == "resnet50_deep"
    with pytest.raises(ValueError, match="resnet50_deep"):
        resolve_backbone_name("resnet50_dep")
    with pytest.raises(ValueError, match=r"allowed values: \[8, 16, 32\]"):
        get_backbone("resnet50_tv", output_stride=4)
