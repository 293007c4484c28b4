"""The architecture options of the registry: upsampling convention, input channels,
training-only auxiliary heads; and the preprocessing modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab
from keras_deeplab import SegmentationModel
from keras_deeplab.heads.common import logits_conv
from keras_deeplab.layers import Preprocessing, ResizeBilinear
from keras_deeplab.registry import (
    ARCHITECTURES,
    HEADS,
    Architecture,
    Head,
    register_architecture,
    register_head,
)
from keras_deeplab.training.losses import loss_terms


def _toy_graph(x, args):
    return logits_conv(x, args["num_classes"], name="toy_logits")


def _register(name, **fields):
    ARCHITECTURES.pop(name, None)
    register_architecture(Architecture(name=name, **fields))


def _aux_head(x, features, args):
    return logits_conv(features["stride_8"], args["num_classes"], name="toy_aux_logits")


@pytest.fixture(scope="module")
def aux_architecture():
    HEADS.pop("toy_aux", None)
    register_head(Head("toy_aux", build=_aux_head))
    _register(
        "toy_aux_arch",
        heads=lambda args: ("logits",),
        options={"aux_head": True},
        default_backbone="mobilenetv2_dm05",
        auxiliary=lambda args: (("toy_aux", 0.4),) if args["aux_head"] else (),
    )
    yield "toy_aux_arch"
    ARCHITECTURES.pop("toy_aux_arch")
    HEADS.pop("toy_aux")


def test_preprocessing_modes_match_their_formulas():
    rgb = np.random.default_rng(0).uniform(0, 255, (1, 3, 4, 3)).astype("float32")
    torch_like = (rgb / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(Preprocessing("torch")(rgb), torch_like, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Preprocessing("unit")(rgb), rgb / 255, rtol=1e-6)
    np.testing.assert_array_equal(Preprocessing("bgr")(rgb), rgb[..., ::-1])
    gray = rgb[..., :1]
    np.testing.assert_allclose(Preprocessing("unit")(gray), gray / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="torch"):
        Preprocessing("imagenet")


def test_resize_half_pixel_matches_tf_image_resize():
    x = np.random.default_rng(1).normal(size=(1, 5, 7, 2)).astype("float32")
    ref = np.zeros((1, 13, 17, 2), "float32")
    got = ResizeBilinear(align_corners=False)([x, ref])
    np.testing.assert_allclose(got, tf.image.resize(x, (13, 17), "bilinear"), atol=1e-5)
    corners = ResizeBilinear()([x, ref])
    np.testing.assert_allclose(corners[0, -1, -1], x[0, -1, -1], atol=1e-6)  # align corners
    layer = ResizeBilinear.from_config(ResizeBilinear(align_corners=False).get_config())
    assert layer.align_corners is False


def test_graph_architecture_without_upsampling_takes_any_channels():
    _register(
        "toy_gray",
        graph=_toy_graph,
        upsample=None,
        input_channels=None,
        preprocessing="unit",
    )
    try:
        model = SegmentationModel("toy_gray", num_classes=2, input_shape=(None, None, 1))
        out = model(np.zeros((1, 9, 11, 1), "float32"))
        assert out.shape == (1, 9, 11, 2)
        assert "upsampled_logits" not in [layer.name for layer in model.layers]
        with pytest.raises(ValueError, match="channel"):
            SegmentationModel("toy_gray", input_shape=(None, None, 0))
    finally:
        ARCHITECTURES.pop("toy_gray")


def test_rgb_preprocessing_refuses_other_channel_counts():
    _register("toy_caffe", graph=_toy_graph, input_channels=None, preprocessing="caffe")
    try:
        with pytest.raises(ValueError, match="needs RGB input"):
            SegmentationModel("toy_caffe", input_shape=(None, None, 1))
    finally:
        ARCHITECTURES.pop("toy_caffe")


def test_auxiliary_head_is_training_only(aux_architecture, tmp_path):
    model = SegmentationModel(aux_architecture, num_classes=3)
    without = SegmentationModel(aux_architecture, num_classes=3, aux_head=False)
    info = {f["name"]: f["channels"] for f in model.feature_info}
    aux_params = info["stride_8"] * 3 + 3
    assert model.count_params() == without.count_params() + aux_params
    assert model.auxiliary_loss_weights == {"aux": 0.4}
    assert without.auxiliary_loss_weights == {}
    image = np.random.default_rng(2).uniform(0, 255, (1, 33, 41, 3)).astype("float32")
    inference = model(image)
    assert inference.shape == (1, 33, 41, 3)
    training = model(image, training=True)
    assert sorted(training) == ["aux", "logits"]
    assert training["aux"].shape == (1, 33, 41, 3)
    assert "toy_aux_logits" not in [layer.name for layer in model.layers]  # inference graph
    # The weighted loss: logits term + 0.4 * aux term.
    labels = np.random.default_rng(3).integers(0, 3, (1, 33, 41)).astype("int32")
    plain = loss_terms(labels, training)
    weighted = loss_terms(labels, training, output_weights=model.auxiliary_loss_weights)
    np.testing.assert_allclose(weighted[0][0], 0.4 * plain[0][0], rtol=1e-6)  # "aux" sorts first
    np.testing.assert_allclose(weighted[1][0], plain[1][0], rtol=1e-6)
    # Saved and reloaded with the auxiliary weights.
    path = tmp_path / "aux.keras"
    model.save(path)
    same = keras.models.load_model(path)
    np.testing.assert_array_equal(
        same(image, training=True)["aux"], model(image, training=True)["aux"]
    )


@pytest.mark.parametrize("name", ["deeplabv3_mobilenetv2", "deeplabv3plus_mobilenetv2"])
def test_deeplab_aux_head_supervises_the_final_tap_in_training_only(name):
    kwargs = {"num_classes": 4, "backbone": "mobilenetv2_dm05", "input_shape": (33, 33, 3)}
    model = keras_deeplab.create_model(name, aux_head=True, aux_loss_weight=0.3, **kwargs)
    plain = keras_deeplab.create_model(name, **kwargs)
    final = {f["name"]: f["channels"] for f in model.feature_info}["final"]
    assert model.count_params() == plain.count_params() + final * 4 + 4
    assert model.auxiliary_loss_weights == {"aux": 0.3}
    assert plain.auxiliary_loss_weights == {}
    image = np.random.default_rng(4).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    assert model(image).shape == (1, 33, 33, 4)
    training = model(image, training=True)
    # The classifier's logits stay at the final tap's stride 16: the loss downsamples the labels.
    assert sorted(training) == ["aux", "logits"] and training["aux"].shape == (1, 3, 3, 4)
    assert training["logits"].shape == (1, 33, 33, 4)
    # The official network's weights plus the auxiliary classifier's.
    extra = {w.path for w in model.weights} - {w.path for w in plain.weights}
    assert extra == {"aux_final_logits/kernel", "aux_final_logits/bias"}


def test_deeplab_aux_taps_add_one_weighted_classifier_each():
    model = keras_deeplab.create_model(
        "deeplabv3plus_mobilenetv2",
        num_classes=3,
        backbone="mobilenetv2_dm05",
        aux_head=True,
        aux_taps=["stride_8", "final"],  # a list, as from a YAML recipe
    )
    assert model.auxiliary_loss_weights == {"aux": 0.4, "aux_1": 0.4}
    image = np.zeros((2, 49, 33, 3), "float32")
    training = model(image, training=True)
    assert {key: tuple(value.shape) for key, value in training.items()} == {
        "logits": (2, 49, 33, 3),
        "aux": (2, 7, 5, 3),  # stride 8: (49 - 1) / 8 + 1 by (33 - 1) / 8 + 1
        "aux_1": (2, 4, 3, 3),  # the final tap, stride 16
    }
    assert model.clone().auxiliary_loss_weights == {"aux": 0.4, "aux_1": 0.4}


def test_weights_of_a_model_with_aux_heads_load_into_a_fresh_build(tmp_path):
    """`load_weights` sees the training-only heads Keras saves (a run's `model.weights.h5`)."""
    from keras_deeplab.weights.loading import load_weights

    kwargs = {"num_classes": 3, "backbone": "mobilenetv2_dm05", "aux_head": True}
    kwargs["aux_taps"] = ("stride_8", "final")
    model = keras_deeplab.create_model("deeplabv3plus_mobilenetv2", **kwargs)
    path = tmp_path / "aux.weights.h5"
    model.save_weights(path)
    fresh = keras_deeplab.create_model("deeplabv3plus_mobilenetv2", **kwargs)
    image = np.random.default_rng(5).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    before = fresh(image, training=False)
    load_weights(fresh, path)
    assert not np.array_equal(before, fresh(image))
    np.testing.assert_array_equal(fresh(image), model(image))
    for layer in ("aux_stride_8_logits", "aux_final_logits"):
        np.testing.assert_array_equal(
            fresh._training_graph.get_layer(layer).kernel,
            model._training_graph.get_layer(layer).kernel,
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"aux_head": "yes"}, "aux_head must be True or False"),
        ({"aux_head": True, "aux_loss_weight": 0}, r"aux_loss_weight must be a positive number"),
        ({"aux_head": True, "aux_loss_weight": True}, r"aux_loss_weight must be a positive"),
        ({"aux_head": True, "aux_taps": ["stride_2"]}, r"aux_taps must be distinct backbone taps"),
        ({"aux_head": True, "aux_taps": []}, r"aux_taps must be distinct backbone taps"),
        ({"aux_head": True, "aux_taps": ["final", "final"]}, r"aux_taps must be distinct"),
        (
            {"aux_head": True, "aux_taps": ["stride_16"], "output_stride": 8},
            r"at output stride 8 has no tap 'stride_16' \(it has stride_4, final\)",
        ),
    ],
)
def test_deeplab_aux_head_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        keras_deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=3, **options)


@pytest.mark.parametrize("rates", [None, (6, 12, 18)])  # MobileNetV2's head; three 3x3 too
def test_aspp_filters_set_the_width_of_every_branch_and_the_projection(rates):
    name = "deeplabv3plus_mobilenetv2"
    kwargs = {"num_classes": 3, "backbone": "mobilenetv2_dm05", "atrous_rates": rates}
    model = keras_deeplab.create_model(name, aspp_filters=40, **kwargs)
    widths = {
        layer.name: layer.filters
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Conv2D) and not layer.name.endswith("_depthwise")
    }
    aspp = [key for key in widths if key.startswith(("image_pooling", "aspp", "concat_proj"))]
    assert len(aspp) == (6 if rates else 3), aspp
    assert {widths[key] for key in aspp} == {40}
    assert keras_deeplab.count_params(model.clone()) == keras_deeplab.count_params(model)
    default = keras_deeplab.create_model(name, **kwargs)
    assert keras_deeplab.count_params(default) > keras_deeplab.count_params(model)


def test_deeplab_v3_keeps_the_official_aspp_width():
    """A v3+ option: DeepLab v3 refuses it and builds its ASPP 256 wide (the head's default)."""
    with pytest.raises(ValueError, match="unknown argument 'aspp_filters'"):
        keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05", aspp_filters=128)
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05")
    assert model.get_layer("concat_projection").filters == 256


@pytest.mark.parametrize("value", [0, 12.5, True, "256"])
def test_aspp_filters_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="aspp_filters must be a positive integer"):
        keras_deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=3, aspp_filters=value)


def test_losses_compare_smaller_logits_with_the_label_centre():
    from keras_deeplab.training.losses import pixel_losses

    labels = np.random.default_rng(4).integers(0, 2, (1, 9, 11)).astype("int32")
    logits = np.random.default_rng(5).normal(size=(1, 5, 7, 2)).astype("float32")
    cropped, _ = pixel_losses(labels, logits)
    expected, _ = pixel_losses(labels[:, 2:7, 2:9], logits)
    np.testing.assert_allclose(cropped, expected)


def test_segmenter_overlap_tile_for_models_with_smaller_logits():
    """A valid-padding graph (output = input - 2 * 3) evaluated by mirror padding: the
    Segmenter's labels have the image's size and equal the network on the mirrored image."""
    from keras_deeplab.evaluation import Segmenter

    def valid_graph(x, args):
        y = keras.layers.Conv2D(4, 7, padding="valid", name="valid_conv")(x)
        return logits_conv(y, args["num_classes"], name="valid_logits")

    _register(
        "toy_valid",
        graph=valid_graph,
        upsample=None,
        input_channels=None,
        preprocessing="unit",
        overlap_tile=lambda args, side: (3, 3),
    )
    try:
        model = SegmentationModel("toy_valid", num_classes=2, input_shape=(None, None, 1))
        assert model.overlap_tile_padding(10) == (3, 3)
        image = np.random.default_rng(6).uniform(0, 255, (10, 13, 1)).astype("float32")
        probs = Segmenter(model).predict_proba(image)[0]
        assert probs.shape == (10, 13, 2)
        mirrored = np.pad(image, ((3, 3), (3, 3), (0, 0)), mode="reflect")
        logits = np.asarray(model(mirrored[None]))[0]
        np.testing.assert_array_equal(probs.argmax(-1), logits.argmax(-1))
        # RGB input to a 1-channel model: its luma.
        rgb = np.repeat(image, 3, axis=-1)
        np.testing.assert_allclose(Segmenter(model).predict_proba(rgb)[0], probs, atol=1e-3)
    finally:
        ARCHITECTURES.pop("toy_valid")


def test_tflite_resize_check_follows_the_model_conventions():
    """A half-pixel model's TFLite RESIZE_BILINEAR ops pass; the same ops are refused for
    an align-corners model and the legacy convention (both flags False) always."""
    from keras_deeplab.export.tflite import check_graph

    image = keras.Input((8, 8, 2), batch_size=1)
    reference = keras.Input((16, 16, 2), batch_size=1)

    def flatbuffer(**options):
        class Resize(keras.layers.Layer):
            def call(self, inputs):
                return tf.compat.v1.image.resize_bilinear(inputs[0], (16, 16), **options)

        model = keras.Model([image, reference], Resize()([image, reference]))
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        return converter.convert()

    half = flatbuffer(half_pixel_centers=True)
    assert check_graph(half, half_pixel=True)["RESIZE_BILINEAR"] == 1
    with pytest.raises(RuntimeError, match="align_corners=True as the model"):
        check_graph(half)
    with pytest.raises(RuntimeError, match="or half-pixel centres"):
        check_graph(flatbuffer(), half_pixel=True)  # legacy TF1 resize
    assert check_graph(flatbuffer(align_corners=True))["RESIZE_BILINEAR"] == 1


def test_backbone_weights_refused_before_building_a_whole_network():
    from keras_deeplab import create_model

    with pytest.raises(ValueError, match="fcn_vgg16_from_keras_applications"):
        create_model("fcn8s", backbone_weights="imagenet")
    with pytest.raises(ValueError, match="without a separate backbone"):
        create_model("segnet_basic", backbone_weights="imagenet")


@pytest.mark.slow  # suite time: 12 s; test_training_replicas exports a bf16 run in float32
def test_a_model_trained_in_mixed_precision_exports_in_float32(tmp_path):
    from keras_deeplab import create_model
    from keras_deeplab.export import to_tflite

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.dtype_policy.name == "mixed_bfloat16"
    report = to_tflite(model, tmp_path / "m.tflite", input_size=33)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4  # against the float32 rebuild
    interpreter_types = {d["dtype"].__name__ for d in _tensor_details(tmp_path / "m.tflite")}
    assert "bfloat16" not in interpreter_types and "float16" not in interpreter_types


def _tensor_details(path):
    from keras_deeplab.tflite_file import open_interpreter

    return open_interpreter(path).get_tensor_details()


def test_aux_tap_loss_is_the_same_with_unknown_spatial_sizes():
    """Traced with `None` height and width (any image size), the loss still compares each
    tap's logits with the labels of its grid, not a crop of them."""
    model = keras_deeplab.create_model(
        "deeplabv3plus_mobilenetv2",
        num_classes=3,
        backbone="mobilenetv2_dm05",
        input_shape=(None, None, 3),
        aux_head=True,
        aux_taps=["stride_8", "final"],
    )
    rng = np.random.default_rng(5)
    images = tf.constant(rng.uniform(0, 255, (2, 33, 49, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 3, (2, 33, 49)).astype("int32"))

    def terms(x, y):
        return [t for pair in loss_terms(y, model(x, training=True)) for t in pair]

    spec = [tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, None], tf.int32)]
    traced = tf.function(terms, input_signature=spec, autograph=False)
    # (graph and eager round BatchNorm's batch statistics differently: 3e-4 of a total)
    np.testing.assert_allclose(traced(images, labels), terms(images, labels), rtol=2e-3)
