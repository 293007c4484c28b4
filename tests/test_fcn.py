"""FCN-32s/16s/8s/8s-at-once (VGG-16, the reference Caffe nets) and the FCN-ResNet head.

Exact parameter counts against the reference nets (seed_systems.md §1.3), the shape trace
of the Caffe nets (pad 100, ceil pooling, crops), output size == input size for any size,
the bilinear upsampler, the at-once scaling, loading keras.applications VGG16 with fc1/fc2
reshaped, bad input, `.keras`, the Segmenter and TFLite. Everything but the counts and the
VGG16 transplant runs on reduced fc6/fc7 widths (`fc_channels`).
"""

import keras
import numpy as np
import pytest
from conftest import randomize_weights

import keras_deeplab.architectures.fcn as fcn
import keras_deeplab.architectures.fcn_resnet  # noqa: F401 - registers fcn_resnet50/101
from keras_deeplab import SegmentationModel, create_model
from keras_deeplab.architectures.fcn_layers import (
    BilinearUpsampling,
    CropToReference,
    bilinear_kernel,
)

SMALL = {"fc_channels": 16, "num_classes": 3}
# seed_systems.md §1.3 (21 classes): learnable, and with the fixed C x C deconv blobs.
COUNTS = {
    "fcn32s": (134_346_581, 136_152_917),
    "fcn16s": (134_357_354, 134_815_994),
    "fcn8s": (134_362_751, 134_489_759),
    "fcn8s_atonce": (134_362_751, 134_489_759),
}
DECONVS = {
    "fcn32s": {"upscore": (64, 32)},
    "fcn16s": {"upscore2": (4, 2), "upscore16": (32, 16)},
    "fcn8s": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
    "fcn8s_atonce": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
}
CROPS = {
    "fcn32s": {"score": 19},
    "fcn16s": {"score_pool4c": 5, "score": 27},
    "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn8s_atonce": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _images(size, seed=0, batch=1):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


@pytest.fixture(scope="module")
def small_models():
    """Every FCN variant at fc_channels=16, 3 classes, random (non-zero) score layers."""
    return {
        name: randomize_weights(create_model(name, **SMALL), seed=i)
        for i, name in enumerate(COUNTS)
    }


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_equal_the_reference_nets(name):
    """Trainable = the Caffe/torchfcn learnable count; total adds the fixed C x C bilinear
    deconvolution kernels (non-trainable, `lr_mult: 0`), which torchfcn also stores."""
    model = create_model(name)  # 21 classes, fc_channels 4096; counts do not depend on H, W
    trainable, total = COUNTS[name]
    assert _trainable(model) == trainable
    assert model.count_params() == total
    fixed = [w for w in model.non_trainable_weights]
    assert {w.path.split("/")[0] for w in fixed} == set(DECONVS[name])
    keras.backend.clear_session()


@pytest.mark.parametrize("name", list(COUNTS))
def test_layers_are_those_of_the_reference_net(name, small_models):
    model = small_models[name]
    assert (model.architecture, model.backbone_name, model.output_stride) == ("fcn", None, 32)
    assert model.preprocessing == "caffe"
    for layer_name, (kernel, stride) in DECONVS[name].items():
        layer = model.get_layer(layer_name)
        assert isinstance(layer, keras.layers.Conv2DTranspose) and not layer.trainable
        assert (layer.kernel_size, layer.strides, layer.use_bias) == (
            (kernel, kernel),
            (stride, stride),
            False,
        )
    crops = {la.name: la.offset for la in model.layers if isinstance(la, CropToReference)}
    assert crops == CROPS[name]
    assert model.get_layer("block1_conv1").padding == "valid"
    assert model.get_layer("conv1_1_pad").padding == ((100, 100), (100, 100))
    assert model.get_layer("fc6").kernel_size == (7, 7)
    assert model.get_layer("fc6").padding == "valid"
    scales = {la.name: la.scale for la in model.layers if isinstance(la, keras.layers.Rescaling)}
    assert scales == ({"scale_pool4": 0.01, "scale_pool3": 0.0001} if "atonce" in name else {})


def test_shape_trace_of_the_caffe_net_at_500():
    """seed_systems.md §1.1: 500x500 -> pool3 88, pool4 44, pool5 22, fc7 16, upscore2 34,
    upscore_pool4 70, upscore8 568, crop 31 -> 500 (static shapes, nothing run)."""
    model = create_model("fcn8s", input_shape=(500, 500, 3), **SMALL)
    sizes = {
        name: model.get_layer(name).output.shape[1]
        for name in ("pool3", "pool4", "pool5", "fc7", "upscore2", "upscore_pool4", "upscore8")
    }
    assert sizes == {
        "pool3": 88,
        "pool4": 44,
        "pool5": 22,
        "fc7": 16,
        "upscore2": 34,
        "upscore_pool4": 70,
        "upscore8": 568,
    }
    assert model.output.shape[1:] == (500, 500, 3)


@pytest.mark.parametrize("name", list(COUNTS))
def test_output_size_equals_input_size_for_any_size(name, small_models):
    model = small_models[name]
    for size in ((1, 1), (6, 1), (5, 2), (33, 41)):
        y = np.asarray(model(_images(size)))
        assert y.shape == (1, *size, 3)
        assert np.all(np.isfinite(y)) and np.abs(y).max() > 0


def test_fresh_model_scores_are_zero():
    """score_fr / score_pool4 / score_pool3 start at zero (Caffe's default filler)."""
    model = create_model("fcn8s", **SMALL)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert all(not np.any(w) for w in model.get_layer(name).get_weights())
    assert not np.any(np.asarray(model(_images((33, 41)))))


def test_bilinear_kernel_is_the_reference_filter():
    # surgery.upsample_filt(4): factor 2, centre 1.5 -> profile (0.25, 0.75, 0.75, 0.25)
    np.testing.assert_allclose(bilinear_kernel(4), np.outer(*[[0.25, 0.75, 0.75, 0.25]] * 2))
    # odd size 3: factor 2, centre 1 -> (0.5, 1, 0.5)
    np.testing.assert_allclose(bilinear_kernel(3), np.outer(*[[0.5, 1.0, 0.5]] * 2))
    kernel = np.asarray(BilinearUpsampling()((16, 16, 3, 3)))
    for c in range(3):
        for d in range(3):
            expected = bilinear_kernel(16) if c == d else np.zeros((16, 16))
            np.testing.assert_allclose(kernel[:, :, c, d], expected, atol=0)
    with pytest.raises(ValueError, match=r"\[k, k, C, C\]"):
        BilinearUpsampling()((4, 4, 3, 2))


def test_fixed_deconvolution_interpolates_each_class_linearly():
    """upscore2 (4/2) on a per-class linear ramp gives the same ramp at half the spacing away
    from the borders, and never mixes classes."""
    from keras_deeplab.architectures.fcn_layers import bilinear_upsampling

    layer = bilinear_upsampling(2, 4, 2, name="up")
    ramp = np.arange(6, dtype="float32")
    x = np.stack([np.add.outer(ramp, ramp), np.zeros((6, 6), "float32")], -1)[None]
    y = np.asarray(layer(x))
    assert y.shape == (1, 14, 14, 2)
    assert not np.any(y[..., 1])
    # interior output o maps to input (o - 1.5) / 2 (Caffe/torch deconvolution alignment)
    inner = y[0, 3:11, 3:11, 0]
    coords = (np.arange(3, 11) - 1.5) / 2
    np.testing.assert_allclose(inner, np.add.outer(coords, coords), atol=1e-5)
    assert layer.trainable_weights == []


def test_crop_to_reference():
    x = np.arange(2 * 10 * 9 * 1, dtype="float32").reshape(2, 10, 9, 1)
    ref = np.zeros((2, 4, 3, 5), "float32")
    y = np.asarray(CropToReference(5)([x, ref]))
    np.testing.assert_array_equal(y, x[:, 5:9, 5:8])
    with pytest.raises(ValueError, match="offset must be a non-negative integer"):
        CropToReference(-1)


def test_atonce_scales_pool4_and_pool3_before_their_scores(small_models):
    """fcn8s_atonce equals fcn8s whose score_pool4 / score_pool3 kernels are scaled by
    0.01 / 0.0001: the constant multiplies sit exactly on the skip inputs."""
    atonce = small_models["fcn8s_atonce"]
    staged = create_model("fcn8s", **SMALL)
    staged.set_weights(atonce.get_weights())
    for name, scale in (("score_pool4", 0.01), ("score_pool3", 0.0001)):
        kernel, bias = staged.get_layer(name).get_weights()
        staged.get_layer(name).set_weights([kernel * scale, bias])
    x = _images((45, 61))
    np.testing.assert_allclose(np.asarray(staged(x)), np.asarray(atonce(x)), rtol=1e-4, atol=1e-5)
    different = create_model("fcn8s", **SMALL)
    different.set_weights(atonce.get_weights())
    assert np.abs(np.asarray(different(x)) - np.asarray(atonce(x))).max() > 1e-3


def test_fc6_fc7_load_from_keras_applications_vgg16_by_reshape():
    """The thirteen convs by name and fc1/fc2 reshaped: on pool5 features of VGG16's 7x7 the
    fc6 conv computes VGG16's fc1 (random weights, nothing downloaded)."""
    vgg = keras.applications.VGG16(weights=None, include_top=True)  # random Glorot kernels
    for name in ("fc1", "fc2"):
        kernel, bias = vgg.get_layer(name).get_weights()
        vgg.get_layer(name).set_weights([kernel, np.linspace(-1, 1, bias.size, dtype="float32")])
    model = fcn.fcn_vgg16_from_keras_applications(create_model("fcn32s"), vgg)
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        for ours, theirs in zip(
            model.get_layer(name).get_weights(), vgg.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    pool5 = np.random.default_rng(1).uniform(0, 1, (2, 7, 7, 512)).astype("float32")
    fc6 = np.asarray(model.get_layer("fc6")(pool5))[:, 0, 0]
    fc1 = np.asarray(vgg.get_layer("fc1")(pool5.reshape(2, -1)))
    np.testing.assert_allclose(fc6, fc1, rtol=1e-4, atol=1e-4)
    hidden = np.random.default_rng(2).uniform(0, 1, (2, 1, 1, 4096)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(model.get_layer("fc7")(hidden))[:, 0, 0],
        np.asarray(vgg.get_layer("fc2")(hidden[:, 0, 0])),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="include_top=True"):
        fcn.fcn_vgg16_from_keras_applications(
            model, keras.applications.VGG16(weights=None, include_top=False)
        )
    with pytest.raises(ValueError, match="does not reshape"):
        fcn.fcn_vgg16_from_keras_applications(create_model("fcn32s", fc_channels=8), vgg)
    keras.backend.clear_session()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"backbone": "xception65"}, r"backbone must be None.*fcn_resnet50"),
        ({"variant": "4s"}, r"variant must be one of '32s', '16s', '8s', '8s_atonce'"),
        ({"output_stride": 16}, r"output_stride must be 32"),
        ({"fc_channels": 0}, r"fc_channels must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"input_shape": (None, None, 1)}, r"channels|RGB"),
    ],
)
def test_bad_options_are_one_clear_error(options, match):
    with pytest.raises(ValueError, match=match):
        create_model("fcn8s", **{**SMALL, **options})


def test_keras_round_trip_keeps_the_fixed_upsamplers(small_models, tmp_path):
    model = small_models["fcn16s"]
    path = tmp_path / "fcn16s.keras"
    model.save(path)
    same = keras.models.load_model(path)
    assert isinstance(same, SegmentationModel) and same.get_config() == model.get_config()
    assert not same.get_layer("upscore16").trainable
    assert _trainable(same) == _trainable(model)
    x = _images((37, 29))
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(model(x)))


def test_segmenter_predicts_any_size(small_models):
    from keras_deeplab.evaluation import Segmenter

    model = small_models["fcn8s"]
    labels = Segmenter(model).predict([_images((45, 70))[0], _images((20, 33), seed=1)[0]])
    assert [la.shape for la in labels] == [(45, 70), (20, 33)]


def test_training_step_updates_only_the_learnable_layers(small_models):
    model = create_model("fcn32s", **SMALL)
    model.set_weights(small_models["fcn32s"].get_weights())
    before = model.get_layer("upscore").get_weights()[0].copy()
    x, y = _images((33, 33), batch=2), np.zeros((2, 33, 33), "int32")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    score = model.get_layer("score_fr").get_weights()[0].copy()
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(model.get_layer("upscore").get_weights()[0], before)
    assert np.abs(model.get_layer("score_fr").get_weights()[0] - score).max() > 0


@pytest.mark.slow  # ~40-70 s on 2 shared cores (conversion + verification)
def test_tflite_export_uses_builtin_transpose_conv(small_models, tmp_path):
    from keras_deeplab.export import to_tflite

    report = to_tflite(small_models["fcn8s"], tmp_path / "fcn8s.tflite", input_size=(45, 61))
    assert report["passed"]
    ops = report["op_counts"]
    assert ops.get("TRANSPOSE_CONV") == 3
    assert not [op for op in ops if op.startswith("CUSTOM") or op == "FLEX"]
    assert report["max_abs_diff"] < 1e-3


# ---------------------------------------------------------------- FCN-ResNet (torchvision)

RESNET_COUNTS = {  # torchvision num_params (learnable); Keras totals add BN statistics
    ("fcn_resnet50", True): (35_322_218, 35_376_874),
    ("fcn_resnet50", False): (32_957_013, 33_011_157),
    ("fcn_resnet101", True): (54_314_346, 54_421_226),
}


@pytest.mark.parametrize(("name", "aux"), list(RESNET_COUNTS))
def test_fcn_resnet_counts_equal_torchvision(name, aux):
    model = create_model(name, aux_head=aux)
    assert (_trainable(model), model.count_params()) == RESNET_COUNTS[name, aux]
    keras.backend.clear_session()


def test_fcn_resnet_head_and_auxiliary_head():
    model = create_model("fcn_resnet50", num_classes=3)
    assert (model.architecture, model.backbone_name, model.output_stride) == (
        "fcn_resnet",
        "resnet50_tv",
        8,
    )
    assert model.preprocessing == "torch"
    assert model.auxiliary_loss_weights == {"aux": 0.5}  # torchvision's train.py
    graph = model._training_graph
    assert graph.get_layer("fcn_conv").kernel.shape == (3, 3, 2048, 512)
    assert graph.get_layer("aux_fcn_conv").kernel.shape == (3, 3, 1024, 256)
    for name in ("fcn_bn", "aux_fcn_bn"):
        assert graph.get_layer(name).epsilon == 1e-5
    for name in ("fcn_dropout", "aux_fcn_dropout"):
        assert graph.get_layer(name).rate == 0.1
    x = _images((37, 45))
    assert model(x).shape == (1, 37, 45, 3)
    out = model(x, training=True)
    assert sorted(out) == ["aux", "logits"]
    assert out["aux"].shape == out["logits"].shape == (1, 37, 45, 3)
    plain = create_model("fcn_resnet50", num_classes=3, aux_head=False)
    assert plain.auxiliary_loss_weights == {}
    keras.backend.clear_session()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"backbone": "xception65"}, r"fcn_resnet is defined on resnet50_tv, resnet101_tv"),
        ({"aux_head": "yes"}, r"aux_head must be True or False"),
        ({"head_dropout": -0.1}, r"head_dropout must be a number in \[0, 1\)"),
    ],
)
def test_fcn_resnet_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        create_model("fcn_resnet50", **options)
