"""Model builders and registry: official architecture facts, shapes, heads, errors."""

import keras
import numpy as np
import pytest

import keras_deeplab
from keras_deeplab import count_params, create_model
from keras_deeplab.layers import Conv2D, DepthwiseConv2D

# Reference §2.2 (official_deeplab.md): (total incl. BN statistics, trainable) for 21 classes.
REFERENCE_COUNTS = {
    "deeplabv3plus_xception65": (41_258_213, 41_055_413),
    "deeplabv3_mobilenetv2": (2_146_645, 2_113_557),
}
REFERENCE_COUNTS_SLOW = {
    "deeplabv3plus_xception41": (28_241_573, 28_108_661),
    "deeplabv3plus_xception71": (43_694_413, 43_477_837),
    "deeplabv3plus_resnet50_beta": (26_891_013, 26_819_909),
    "deeplabv3plus_resnet101_beta": (45_935_365, 45_812_037),
}


def _params(name, **kw):
    model = create_model(name, **kw)
    counts = count_params(model)
    keras.backend.clear_session()
    return counts


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_official(name):
    assert _params(name) == REFERENCE_COUNTS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS_SLOW))
def test_parameter_counts_equal_official_slow(name):
    assert _params(name) == REFERENCE_COUNTS_SLOW[name]


@pytest.mark.slow
def test_resnet101_beta_regular_aspp_count():
    # Reference §2.2 "same, regular 3x3 ASPP".
    counts = _params("deeplabv3plus_resnet101_beta", aspp_separable=False)
    assert counts == (58_438_405, 58_327_365)


def test_public_call_from_the_brief():
    model = keras_deeplab.DeepLabV3Plus(backbone="xception", num_classes=21)
    assert model.get_layer("xception65_backbone") is not None
    assert model.output_shape == (None, None, None, 21)


def test_registry_lists_and_builds_every_family():
    names = keras_deeplab.list_models()
    for expected in (
        "deeplabv3plus_xception65",
        "deeplabv3_mobilenetv2_dm05_os8",
        "deeplabv2_resnet101_aspp_l",
        "deeplabv1_vgg16_largefov",
    ):
        assert expected in names


def _conv_layers(model):
    """Conv layers in graph order, descending into nested models."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_conv_layers(layer))
        elif isinstance(layer, (Conv2D, DepthwiseConv2D)):
            out.append(layer)
    return out


def test_mobilenetv2_dm05_os8_matches_official_tflite_structure():
    from tests.official_tflite import official_convs, official_tflite_dir

    official = official_convs(official_tflite_dir() / "model_structure.txt")
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", input_shape=(257, 257, 3))
    ours = _conv_layers(model)
    assert len(ours) == len(official) == 55
    for layer, ref in zip(ours, official, strict=True):
        if ref.op == "DEPTHWISE_CONV_2D":
            assert isinstance(layer, DepthwiseConv2D), (layer.name, ref.weight)
            _, kh, kw, c = ref.shape
            expected = (kh, kw, c, 1)
        else:
            assert not isinstance(layer, DepthwiseConv2D), (layer.name, ref.weight)
            cout, kh, kw, cin = ref.shape
            expected = (kh, kw, cin, cout)
        assert tuple(layer.kernel.shape) == expected, (layer.name, ref.weight)
        assert tuple(layer.dilation_rate) == ref.dilation, (layer.name, ref.weight)
        assert tuple(layer.strides) == ref.stride, (layer.name, ref.weight)
        # Layer names follow the official scopes ("/" -> "_").
        scope = ref.weight.rsplit("/", 1)[0].removeprefix("MobilenetV2/").replace("/", "_")
        assert layer.name == scope


SIZES = [(65, 97), (129, 129), (96, 128)]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("deeplabv3plus_mobilenetv2", {}),
        ("deeplabv3_mobilenetv2_dm05_os8", {}),
        ("deeplabv3plus_resnet50_beta", {"output_stride": 8}),
        ("deeplabv2_resnet50_aspp_l", {}),
        ("deeplabv1_vgg16_largefov", {}),
        pytest.param(  # suite time: 7 s
            "deeplabv3plus_xception65", {"output_stride": 32}, marks=pytest.mark.slow
        ),
    ],
)
def test_output_size_equals_input_size(name, kwargs):
    model = create_model(name, num_classes=5, **kwargs)
    for h, w in SIZES:
        x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32")
        assert model(x).shape == (1, h, w, 5), (name, h, w)
    keras.backend.clear_session()


def test_fixed_input_shape_and_activation():
    model = keras_deeplab.DeepLabV3(
        backbone="mobilenetv2_dm05", num_classes=3, input_shape=(65, 65, 3), activation="softmax"
    )
    assert model.output_shape == (None, 65, 65, 3)
    y = model(np.full((2, 65, 65, 3), 128.0, "float32"))
    np.testing.assert_allclose(np.sum(y, -1), 1.0, rtol=1e-5)


def test_include_preprocessing_adds_no_weights_and_normalises():
    a = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=4)
    b = keras_deeplab.DeepLabV3(
        backbone="mobilenetv2_dm05", num_classes=4, include_preprocessing=False
    )
    assert count_params(a) == count_params(b)
    b.set_weights(a.get_weights())
    x = np.random.default_rng(1).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    np.testing.assert_allclose(a(x), b(x / 127.5 - 1.0), atol=1e-4)


def test_caffe_preprocessing_is_bgr_mean_subtraction():
    layer = keras_deeplab.layers.Preprocessing("caffe")
    x = np.array([[[[10.0, 20.0, 30.0]]]], "float32")
    np.testing.assert_allclose(
        layer(x)[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6
    )


def test_v2_aspp_l_sums_four_branches():
    model = create_model("deeplabv2_resnet50_aspp_l", num_classes=3, input_shape=(65, 65, 3))
    add = model.get_layer("aspp_v2_sum")
    branch_names = [
        "logits_semantic",
        "logits_semantic_1",
        "logits_semantic_2",
        "logits_semantic_3",
    ]
    branches = [model.get_layer(n) for n in branch_names]
    assert [b.dilation_rate for b in branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.kernel_size == (3, 3) and b.use_bias for b in branches)
    probe = keras.Model(model.input, [add.output] + [b.output for b in branches])
    x = np.random.default_rng(2).uniform(0, 255, (1, 65, 65, 3)).astype("float32")
    total, *parts = probe(x)
    assert len(parts) == 4
    np.testing.assert_allclose(total, sum(parts), rtol=1e-5, atol=1e-5)


def test_v2_vgg_aspp_s_branches():
    model = create_model("deeplabv2_vgg16_aspp_s", num_classes=3)
    rates = [model.get_layer(f"fc6_{i}").dilation_rate[0] for i in range(1, 5)]
    assert rates == [2, 4, 8, 12]
    assert model.get_layer("fc6_1").filters == 1024 and model.get_layer("fc7_1").filters == 1024
    assert len(model.get_layer("aspp_v2_sum").input) == 4


def test_largefov_head():
    model = create_model("deeplabv1_vgg16_largefov", num_classes=21)
    assert model.get_layer("fc6").dilation_rate == (12, 12)
    assert model.get_layer("fc6").filters == 1024
    assert model.get_layer("pool5a").pool_size == (3, 3)


def test_msc_fuses_by_max_in_inference_and_exposes_scales_in_training():
    model = keras_deeplab.DeepLabV2(
        backbone="mobilenetv2_dm05", num_classes=3, multi_scale=True, output_stride=16
    )
    x = np.random.default_rng(3).uniform(0, 255, (1, 65, 49, 3)).astype("float32")
    fused = model(x, training=False)
    # Inference fusion equals the max over the per-scale logits (inference mode).
    single = model.model
    resize = keras_deeplab.layers.ResizeBilinear
    per_scale = [single(x)]
    for s in (0.75, 0.5):
        small = resize(scale=s)(x)
        assert small.shape[1:3] == (int(64 * s + 1), int(48 * s + 1))
        per_scale.append(resize()([single(small), x]))
    np.testing.assert_allclose(fused, np.max(np.stack(per_scale), 0), rtol=1e-5, atol=1e-5)
    assert count_params(model) == count_params(single)
    outs = model(x, training=True)
    assert set(outs) == {"fused", "scale_1", "scale_0.75", "scale_0.5"}
    for value in outs.values():
        assert value.shape == (1, 65, 49, 3)
    stacked = np.stack([outs["scale_1"], outs["scale_0.75"], outs["scale_0.5"]])
    np.testing.assert_allclose(outs["fused"], np.max(stacked, 0), rtol=1e-6)


def test_keras_round_trip_identical_outputs(tmp_path):
    model = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2_dm05", num_classes=4)
    x = np.random.default_rng(4).uniform(0, 255, (1, 49, 65, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model(x), loaded(x))


def test_keras_round_trip_msc(tmp_path):
    model = keras_deeplab.DeepLabV2(backbone="mobilenetv2_dm05", num_classes=2, multi_scale=True)
    x = np.random.default_rng(5).uniform(0, 255, (1, 41, 41, 3)).astype("float32")
    path = tmp_path / "msc.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model(x), loaded(x))


def test_weights_argument_loads_weights_file(tmp_path):
    model = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=4)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    again = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=4, weights=str(path))
    x = np.random.default_rng(6).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    np.testing.assert_array_equal(model(x), again(x))


@pytest.mark.slow  # suite time: 20 s; to_saved_model's dynamic shapes are tested in test_export_saved_model
def test_export_with_dynamic_size_equals_keras(tmp_path):
    import tensorflow as tf

    model = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2_dm05", num_classes=4)
    model.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm"))
    for h, w in [(65, 97), (96, 128)]:
        x = np.random.default_rng(h).uniform(0, 255, (1, h, w, 3)).astype("float32")
        y = served.serve(x)
        assert y.shape == (1, h, w, 4)
        assert np.max(np.abs(y - model(x))) <= 1e-5


def _tflite_interpreter(model, size, tmp_path):
    """Converts through `model.export` (a lambda concrete function loses the variables)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    signature = [tf.TensorSpec([1, size, size, 3], tf.float32)]
    model.export(str(tmp_path / "tflite_sm"), verbose=False, input_signature=signature)
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "tflite_sm")).convert()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return interpreter


def _check_native_dilated_tflite(interpreter):
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "SPACE_TO_BATCH_ND" not in ops and "BATCH_TO_SPACE_ND" not in ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR"} <= ops


@pytest.mark.slow  # suite time: 24 s; to_tflite's native dilations and values are tested in test_export_tflite
def test_tflite_equals_keras_with_native_dilated_convs(tmp_path):
    # Through Keras' own `model.export`: align-corners resizes and dilated convs stay native
    # TFLite ops and keep their meaning.
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    interpreter = _tflite_interpreter(model, 65, tmp_path)
    _check_native_dilated_tflite(interpreter)
    x = np.random.default_rng(7).uniform(0, 255, (1, 65, 65, 3)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.max(np.abs(y - model(x))) <= 1e-4


@pytest.mark.slow  # suite time: 18 s; the test above covers the dilated convs
def test_tflite_large_rates_use_native_dilated_convs(tmp_path):
    model = keras_deeplab.DeepLabV3Plus(
        backbone="mobilenetv2_dm05", output_stride=8, atrous_rates=(12, 24, 36), num_classes=3
    )
    _check_native_dilated_tflite(_tflite_interpreter(model, 65, tmp_path))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: keras_deeplab.DeepLabV3Plus(backbone="resnet34"), "Valid backbones"),
        (lambda: create_model("deeplabv4"), "Registered models"),
        (lambda: keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2", output_stride=12), "allowed"),
        (
            lambda: keras_deeplab.DeepLabV3(backbone="mobilenetv2", num_classes=0),
            "positive integer",
        ),
        (
            lambda: keras_deeplab.DeepLabV3(backbone="mobilenetv2", input_shape=(None, None, 1)),
            "3 channels",
        ),
        (
            lambda: keras_deeplab.DeepLabV3(backbone="mobilenetv2", input_shape=(None, None, 4)),
            "RGBA",
        ),
        (
            lambda: keras_deeplab.DeepLabV3(backbone="mobilenetv2", atrous_rates=(6, 12)),
            "3 positive",
        ),
        (
            lambda: keras_deeplab.DeepLabV2(backbone="resnet50", atrous_rates=(6, 12, 18)),
            "4 positive",
        ),
        (lambda: keras_deeplab.DeepLabV2(backbone="resnet50", aspp="M"), "'L'"),
        (lambda: keras_deeplab.DeepLabV3(backbone="xception65", head="cascade"), "not a ResNet"),
        (lambda: keras_deeplab.DeepLabV1(backbone="resnet50"), "vgg16 only"),
    ],
)
def test_bad_arguments_raise_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cascade_head_rates():
    model = keras_deeplab.DeepLabV3(
        backbone="resnet50_beta", head="cascade", cascade_blocks=2, num_classes=3
    )
    # OS16: block4 at rate 2, block5 at 4, block6 at 8, times multi-grid (1, 2, 4).
    rates = [
        model.get_layer(f"block{b}_unit_{u}_bottleneck_v1_conv2").dilation_rate[0]
        for b in (5, 6)
        for u in (1, 2, 3)
    ]
    assert rates == [4, 8, 16, 8, 16, 32]
    x = np.zeros((1, 33, 33, 3), "float32")
    assert model(x).shape == (1, 33, 33, 3)


def test_count_macs_by_hand():
    inputs = keras.Input((None, None, 3))
    x = Conv2D(8, 3, strides=2, padding="same")(inputs)  # 9x9 out: 81*9*3*8
    x = DepthwiseConv2D(3, padding="same", dilation_rate=2)(x)  # 81*9*8
    x = keras.layers.Dense(5)(x)  # 81*8*5
    model = keras.Model(inputs, x)
    assert keras_deeplab.count_macs(model, (17, 17)) == 81 * 9 * 3 * 8 + 81 * 9 * 8 + 81 * 8 * 5


# Official model zoo "MAdds" at 513x513 (g3doc/model_zoo.md). We count conv/dense
# multiply-adds only; tfprof also counts bias adds and BN, hence slightly more.
OFFICIAL_MADDS = {
    "deeplabv3_mobilenetv2_dm05": 0.88e9,
    "deeplabv3_mobilenetv2": 2.75e9,
    "deeplabv3_mobilenetv2_dm05_os8": 2.84e9,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_MADDS))
def test_macs_close_to_official_model_zoo(name):
    macs = keras_deeplab.count_macs(create_model(name), (513, 513))
    assert 0.98 * OFFICIAL_MADDS[name] <= macs <= OFFICIAL_MADDS[name]


@pytest.mark.parametrize(
    "name",
    # one per head family with shape-dependent layers: image pooling, pyramid pooling, the
    # decoder's low-level path, SegNet's unpooling, valid U-Net, ParseNet's global context
    ["deeplabv3plus_mobilenetv2", "pspnet_mobilenetv2", "segnet_basic", "unet"],
)
def test_macs_of_the_graph_run_at_a_size_equal_a_rebuild_at_that_size(name):
    """`count_macs` runs the model's own graph on a symbolic input of the size; building the
    model again at that fixed size (the earlier method) counts the same multiply-adds."""
    from keras_deeplab.macs import graph_macs
    from keras_deeplab.optimize import optimize_for_inference

    model = create_model(name, num_classes=5)
    config = model.get_config()
    size = (188, 204) if name == "unet" else (65, 97)
    channels = config["input_shape"][-1]
    fixed = type(model).from_config({**config, "input_shape": [*size, channels]})
    for depthwise_only in (False, True):
        expected = graph_macs(fixed, depthwise_only)
        assert keras_deeplab.count_macs(model, size, depthwise_only) == expected
    assert expected > 0 or "mobilenet" not in name
    if "mobilenet" in name:  # the inference rewrites (BN folded, space-to-batch) move none
        optimized = optimize_for_inference(model)
        assert keras_deeplab.count_macs(optimized, size, True) == expected
    # a model of a fixed size counted at another size is rebuilt at that size
    assert keras_deeplab.count_macs(fixed, (size[0] + 32, size[1])) > graph_macs(fixed)


@pytest.mark.slow
def test_macs_xception65_close_to_official_model_zoo():
    macs = keras_deeplab.count_macs(create_model("deeplabv3plus_xception65"), (513, 513))
    assert 0.98 * 54.17e9 <= macs <= 54.17e9


def test_msc_macs_sum_over_scales():
    single = create_model("deeplabv3_mobilenetv2_dm05", num_classes=3)
    msc = keras_deeplab.MultiScaleInputs(single, scales=(1.0, 0.5))
    expected = keras_deeplab.count_macs(single, (65, 65)) + keras_deeplab.count_macs(
        single, (33, 33)
    )
    assert keras_deeplab.count_macs(msc, (65, 65)) == expected


def test_largefov_parameter_count_matches_v1_paper():
    # DeepLab v1 paper, Table 2: DeepLab-LargeFOV has 20.5M parameters.
    total, trainable = count_params(create_model("deeplabv1_vgg16_largefov"))
    assert total == trainable == 20_505_429


def test_keras_round_trip_cascade_head(tmp_path):
    # Registered names make this round trip with their defaults in test_registry.py (one per
    # architecture and backbone family by default, all under -m slow); the cascade head is an
    # option only.
    model = create_model("deeplabv3_resnet50_beta", num_classes=3, head="cascade", cascade_blocks=1)
    x = np.random.default_rng(8).uniform(0, 255, (1, 41, 57, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(model(x), loaded(x))
    keras.backend.clear_session()
