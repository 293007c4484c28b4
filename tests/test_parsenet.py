"""ParseNet (Liu et al.): the L2-normalisation layer, the unpooled global branch, the exact
parameter count on DeepLab-LargeFOV, global context on another backbone, exports."""

import keras
import numpy as np
import pytest
from conftest import calibrate_batch_norms

from keras_deeplab import SegmentationModel, create_model
from keras_deeplab.export import to_saved_model, to_tflite
from keras_deeplab.heads.parsenet import L2Normalization, Unpool, global_context

NUM_CLASSES = 3


def _images(size, seed=0, batch=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, *size, 3)).astype("float32")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _randomize_scales(model, seed=0):
    """Scales other than the constant initial ones, so a transposed scale would show."""
    rng = np.random.default_rng(seed)
    for name in ("context_local_norm", "context_global_norm"):
        layer = model.get_layer(name)
        layer.scale.assign(rng.uniform(1.0, 20.0, layer.scale.shape).astype("float32"))


@pytest.fixture(scope="module")
def vgg_parsenet():
    model = create_model("parsenet_vgg16_largefov")
    yield model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def small_parsenet():
    model = create_model(
        "parsenet_mobilenetv2", backbone="mobilenetv2_dm05", num_classes=NUM_CLASSES
    )
    _randomize_scales(model)
    # Fresh BatchNorm statistics give features of ~1e-10, below the norm's epsilon.
    return calibrate_batch_norms(model, _images((33, 41), seed=9, batch=4))


def test_count_on_largefov_is_the_papers(vgg_parsenet):
    # LargeFOV 20,505,429 - its fc8 (1024 -> 21) + fc8 on 2048 channels + two 1024 scales.
    assert vgg_parsenet.count_params() == 20_528_981
    assert _trainable(vgg_parsenet) == 20_528_981
    assert 20_505_429 - (1024 * 21 + 21) + (2048 * 21 + 21) + 2 * 1024 == 20_528_981
    assert vgg_parsenet.get_layer("context_local_norm").scale.shape == (1024,)
    assert vgg_parsenet.get_layer("context_global_norm").scale.shape == (1024,)
    assert vgg_parsenet.get_layer("logits_semantic").kernel.shape == (1, 1, 2048, 21)
    assert (vgg_parsenet.architecture, vgg_parsenet.backbone_name) == ("parsenet", "vgg16")
    assert (vgg_parsenet.output_stride, vgg_parsenet.preprocessing) == (8, "caffe")


@pytest.mark.parametrize("gamma", [1.0, 10.0, 20.0])
def test_every_pixel_of_the_normalised_feature_has_norm_gamma(gamma):
    x = np.random.default_rng(1).normal(0, 3, (2, 5, 7, 16)).astype("float32")
    y = np.asarray(L2Normalization(scale_init=gamma)(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), gamma, rtol=1e-5)
    # Direction kept: y is x / |x| * gamma.
    np.testing.assert_allclose(
        y, x / np.linalg.norm(x, axis=-1, keepdims=True) * gamma, rtol=1e-5, atol=1e-6
    )


def test_scale_is_learned_per_channel():
    layer = L2Normalization(scale_init=1.0)
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 3, 4)).astype("float32")
    layer(x)
    layer.scale.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32"))
    y = np.asarray(layer(x))
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(y, unit * [1.0, 2.0, 3.0, 4.0], rtol=1e-5, atol=1e-6)
    assert [w.name for w in layer.trainable_weights] == ["scale"]


def test_global_branch_is_constant_over_the_map_and_local_branch_normalised(small_parsenet):
    model = small_parsenet
    probe = keras.Model(
        model.input,
        [
            model.get_layer("context_local_norm").output,
            model.get_layer("context_unpool").output,
            model.get_layer("context_concat").output,
        ],
    )
    x = _images((49, 57), seed=3, batch=2)
    local, unpooled, concat = (np.asarray(t) for t in probe(x))
    local_scale = np.asarray(model.get_layer("context_local_norm").scale)
    global_scale = np.asarray(model.get_layer("context_global_norm").scale)
    # |local / scale| == 1 at every pixel.
    np.testing.assert_allclose(np.linalg.norm(local / local_scale, axis=-1), 1.0, rtol=1e-4)
    # The unpooled vector is the same at every pixel, and differs between the two images.
    np.testing.assert_array_equal(unpooled, np.broadcast_to(unpooled[:, :1, :1], unpooled.shape))
    assert not np.allclose(unpooled[0, 0, 0], unpooled[1, 0, 0])
    np.testing.assert_allclose(
        np.linalg.norm(unpooled[:, 0, 0] / global_scale, axis=-1), 1.0, rtol=1e-5
    )
    channels = local.shape[-1]
    assert concat.shape[-1] == 2 * channels == 2 * model.feature_info[-1]["channels"]
    np.testing.assert_array_equal(concat[..., :channels], local)


def test_global_context_on_any_features():
    inputs = keras.Input((None, None, 6))
    model = keras.Model(inputs, global_context(inputs, scale_init=2.0, name="gc"))
    x = np.random.default_rng(4).normal(0, 1, (1, 4, 5, 6)).astype("float32")
    y = np.asarray(model(x))
    mean = x.mean(axis=(1, 2))[0]
    np.testing.assert_allclose(y[0, 2, 3, 6:], mean / np.linalg.norm(mean) * 2.0, rtol=1e-5)
    assert Unpool().compute_output_shape(((None, 1, 1, 6), (None, 4, 5, 9))) == (None, 4, 5, 6)


def test_output_changes_when_a_distant_region_changes(vgg_parsenet):
    """A change far beyond LargeFOV's receptive field (~470 px) moves the logits at the
    other end of the image through the global branch only; DeepLab v1 with the same trunk
    and fc6/fc7 weights does not see it."""
    v1 = create_model("deeplabv1_vgg16_largefov")
    for name in [layer.name for layer in v1.get_backbone().layers if layer.weights]:
        vgg_parsenet.get_backbone().get_layer(name).set_weights(
            v1.get_backbone().get_layer(name).get_weights()
        )
    for name in ("fc6", "fc7"):
        vgg_parsenet.get_layer(name).set_weights(v1.get_layer(name).get_weights())
    image = _images((17, 641), seed=5)
    changed = image.copy()
    changed[:, :, 600:] = 255.0 - changed[:, :, 600:]
    near = np.s_[0, :, :8]  # the first 8 columns, 600 px away from the change
    parse = np.asarray(vgg_parsenet(image)), np.asarray(vgg_parsenet(changed))
    deeplab = np.asarray(v1(image)), np.asarray(v1(changed))
    assert np.abs(deeplab[0][near] - deeplab[1][near]).max() < 1e-5
    assert np.abs(parse[0][near] - parse[1][near]).max() > 1e-4


def test_on_another_backbone_via_create_model_options():
    model = create_model(
        "parsenet_vgg16_largefov",
        backbone="mobilenetv2_dm05",
        output_stride=16,
        largefov=False,
        num_classes=NUM_CLASSES,
        context_scale=5.0,
    )
    assert model.backbone_name == "mobilenetv2_dm05" and model.preprocessing == "symmetric"
    assert float(np.asarray(model.get_layer("context_local_norm").scale)[0]) == 5.0
    assert model(_images((33, 41))).shape == (1, 33, 41, NUM_CLASSES)
    names = {layer.name for layer in model.layers}
    assert "fc6" not in names and "context_concat" in names


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("context_scale", 0, "context_scale"),
        ("context_scale", "big", "context_scale"),
        ("largefov", "yes", "largefov must be True"),
        ("dropout", 1.0, "dropout must be"),
        ("backbone", "vgg19", "Unknown backbone 'vgg19'"),
        ("context_sacle", 1.0, "did you mean 'context_sacle' -> 'context_scale'"),
    ],
)
def test_bad_options_are_one_clear_error(option, value, message):
    with pytest.raises(ValueError, match=message):
        create_model("parsenet_mobilenetv2", **{option: value})


def test_keras_round_trip_and_activation(small_parsenet, tmp_path):
    model = create_model("parsenet_mobilenetv2", num_classes=NUM_CLASSES, activation="softmax")
    _randomize_scales(model, seed=7)
    calibrate_batch_norms(model, _images((33, 41), seed=9, batch=4))
    x = _images((33, 41), seed=8)
    path = tmp_path / "parsenet.keras"
    model.save(path)
    same = keras.models.load_model(path)
    assert isinstance(same, SegmentationModel) and same.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(model(x)))
    np.testing.assert_allclose(np.asarray(model(x)).sum(-1), 1.0, rtol=1e-5)
    raw = create_model("parsenet_mobilenetv2", num_classes=2, include_preprocessing=False)
    assert raw.preprocessing is None and raw.num_classes == 2


@pytest.mark.slow  # suite time: 20 s; benchmarks/seeds_export.py exports every seed model
def test_tflite_builtin_ops(small_parsenet, tmp_path):
    report = to_tflite(small_parsenet, tmp_path / "parsenet.tflite", input_size=(33, 41))
    ops = report["op_counts"]
    assert report["passed"] and report["max_abs_diff"] < 1e-3, report
    assert not [op for op in ops if "FLEX" in op or "CUSTOM" in op], ops
    assert {"MEAN", "BROADCAST_TO", "CONCATENATION"} <= set(ops), ops
    assert "L2_NORMALIZATION" in ops or "RSQRT" in ops, ops
    print("parsenet_mobilenetv2_dm05 tflite", ops, report["max_abs_diff"])


@pytest.mark.slow
def test_saved_model(small_parsenet, tmp_path):
    saved = to_saved_model(small_parsenet, tmp_path / "saved")
    assert saved["passed"], saved
    print("parsenet saved model", {k: saved.get(k) for k in ("passed", "max_abs_diff")})
