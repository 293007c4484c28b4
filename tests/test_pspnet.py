"""PSPNet: adaptive average pooling, the PPM head, the auxiliary head, counts, exports."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import calibrate_batch_norms

from keras_deeplab import create_model
from keras_deeplab.export import to_saved_model, to_tflite
from keras_deeplab.pooling import AdaptiveAveragePooling2D, adaptive_bins
from keras_deeplab.tflite_file import op_counts

RNG = np.random.default_rng(0)


def _trainable(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _images(h, w, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, h, w, 3)).astype("float32")


def _torch_adaptive_pool(x, bins):
    """numpy: torch's AdaptiveAvgPool2d rule, bin i = [floor(i*H/n), ceil((i+1)*H/n))."""
    out = np.zeros((x.shape[0], bins, bins, x.shape[-1]))
    for i in range(bins):
        h0, h1 = (i * x.shape[1]) // bins, -(-((i + 1) * x.shape[1]) // bins)
        for j in range(bins):
            w0, w1 = (j * x.shape[2]) // bins, -(-((j + 1) * x.shape[2]) // bins)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def _builtin_only(ops):
    return not any(op.startswith(("CUSTOM", "FLEX")) for op in ops)


# --------------------------------------------------------------------------- pooling


def test_adaptive_bins_rule():
    assert adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]  # overlapping bins
    assert adaptive_bins(4, 6) == [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]
    # 473 px at stride 8: a 60x60 map; the Caffe deploy's AVE kernels 60/30/20/10 are the bins.
    for bins, kernel in ((1, 60), (2, 30), (3, 20), (6, 10)):
        assert adaptive_bins(60, bins) == [(i * kernel, (i + 1) * kernel) for i in range(bins)]


@pytest.mark.parametrize("size", [(7, 11), (5, 5), (4, 9), (1, 3), (13, 6)])
def test_adaptive_pooling_equals_torch_rule(size):
    x = RNG.standard_normal((2, *size, 5)).astype("float32")
    for bins in (1, 2, 3, 6):
        got = AdaptiveAveragePooling2D(bins)(x).numpy()
        np.testing.assert_allclose(got, _torch_adaptive_pool(x, bins), atol=1e-6)
    got = AdaptiveAveragePooling2D((2, 3))(x).numpy()
    assert got.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(got[:, :, :, 0].mean(), x[..., 0].mean(), atol=0.5)


def test_adaptive_pooling_equals_fixed_pooling_when_divisible():
    x = RNG.standard_normal((1, 60, 60, 4)).astype("float32")
    for bins in (1, 2, 3, 6):
        fixed = keras.layers.AveragePooling2D(60 // bins)(x).numpy()
        np.testing.assert_allclose(AdaptiveAveragePooling2D(bins)(x).numpy(), fixed, atol=1e-6)


def test_adaptive_pooling_dynamic_shape_config_and_bad_input():
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, AdaptiveAveragePooling2D(3, name="pool")(inputs))
    assert model.output.shape == (None, 3, 3, 4)
    for h, w in ((9, 14), (31, 5)):
        x = RNG.standard_normal((1, h, w, 4)).astype("float32")
        np.testing.assert_allclose(model(x).numpy(), _torch_adaptive_pool(x, 3), atol=1e-6)
    layer = AdaptiveAveragePooling2D.from_config(model.get_layer("pool").get_config())
    assert layer.output_size == (3, 3)
    for bad in (0, (2,), (2, -1), 2.5, True):
        with pytest.raises(ValueError, match="output_size must be a positive integer"):
            AdaptiveAveragePooling2D(bad)


def test_adaptive_pooling_tflite_builtins_dynamic_size():
    """One .tflite with a [1, None, None, C] input, resized to two sizes at run time."""
    from ai_edge_litert.interpreter import Interpreter

    layer = AdaptiveAveragePooling2D(6)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 4], tf.float32)])
    def serve(x):
        return layer(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    assert _builtin_only(op_counts(content=content))
    interpreter = Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    for h, w in ((8, 13), (25, 7)):
        x = RNG.standard_normal((1, h, w, 4)).astype("float32")
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(y, _torch_adaptive_pool(x, 6), atol=1e-5)


# ------------------------------------------------------------------ full-size models


@pytest.fixture(scope="module")
def pspnet50():
    model = create_model("pspnet50", num_classes=21)
    yield model
    keras.backend.clear_session()


def _aux_weights(model):
    return [w for w in model.trainable_weights if w.path.startswith(("aux_", "aux/"))]


def test_pspnet50_counts(pspnet50):
    # seed_systems §6.2 (built from semseg): 46,716,373 without / 49,081,578 with aux.
    trainable = _trainable(pspnet50.trainable_weights)
    assert trainable == 49_081_578
    aux = _trainable(_aux_weights(pspnet50))
    assert aux == 1024 * 256 * 9 + 2 * 256 + 257 * 21  # 2,365,205
    assert trainable - aux == 46_716_373
    bn_stats = pspnet50.count_params() - trainable  # moving mean + variance
    assert pspnet50.count_params() == 49_081_578 + bn_stats
    assert pspnet50.auxiliary_loss_weights == {"aux": 0.4}


@pytest.mark.slow
def test_pspnet101_counts():
    for aux, trainable, total in ((False, 65_708_501, 65_819_349), (True, 68_073_706, 68_185_066)):
        model = create_model("pspnet101", num_classes=21, aux_head=aux)
        assert _trainable(model.trainable_weights) == trainable
        assert model.count_params() == total  # seed_systems §6.2 Keras totals
        keras.backend.clear_session()


def test_pspnet50_structure_and_aux(pspnet50):
    backbone = pspnet50.get_backbone()
    assert backbone.name == "resnet50_deep_backbone"
    assert pspnet50.preprocessing == "torch" and pspnet50.output_stride == 8
    # Caffe concat order [x, pool6, pool3, pool2, pool1]; branch width 2048 / 4 = 512.
    concat = pspnet50.get_layer("ppm_concat")
    sources = [t._keras_history.operation.name for t in concat._inbound_nodes[0].input_tensors]
    assert sources[1:] == [f"ppm_bin{n}_upsample" for n in (6, 3, 2, 1)]
    assert pspnet50.get_layer("ppm_bin6_conv").kernel.shape == (1, 1, 2048, 512)
    assert pspnet50.get_layer("psp_bottleneck_conv").kernel.shape == (3, 3, 4096, 512)
    assert pspnet50.get_layer("ppm_bin3_upsample").align_corners
    aux_kernel = [w for w in pspnet50.weights if w.path == "aux_conv/kernel"]
    assert [tuple(w.shape) for w in aux_kernel] == [(3, 3, 1024, 256)]
    # Inference returns the main logits only, training the aux logits too (input size).
    x = _images(41, 49)
    y = pspnet50(x)
    assert y.shape == (1, 41, 49, 21)
    out = pspnet50(x, training=True)
    assert set(out) == {"logits", "aux"} and out["aux"].shape == (1, 41, 49, 21)


def test_shape_trace_at_473():
    """473 px -> 60x60 stride-8 features; the PPM pools 60x60 into 1/2/3/6 bins (no forward)."""
    model = create_model("pspnet50", num_classes=21, input_shape=(473, 473, 3))
    backbone = model.get_backbone()
    assert backbone.output["final"].shape[1:] == (60, 60, 2048)
    assert backbone.output["layer3_stride_8"].shape[1:] == (60, 60, 1024)
    for bins in (6, 3, 2, 1):
        assert model.get_layer(f"ppm_pool{bins}").output.shape[1:] == (bins, bins, 2048)
        assert model.get_layer(f"ppm_bin{bins}_upsample").output.shape[1:] == (60, 60, 512)
    assert model.get_layer("ppm_concat").output.shape[1:] == (60, 60, 4096)
    assert model.get_layer("psp_logits").output.shape[1:] == (60, 60, 21)
    assert model.output.shape[1:] == (473, 473, 21)
    keras.backend.clear_session()


# ------------------------------------------------------------------ other backbones


def test_ppm_head_formula_on_mobilenetv2():
    # seed_systems §6.2: head = C_in^2 + 9218 C_in + 513 C + 1024 (3,063,957 for 320 / 21).
    model = create_model("pspnet_mobilenetv2", num_classes=21)
    head = _trainable(model.trainable_weights) - _trainable(model.get_backbone().trainable_weights)
    assert head == 320**2 + 9218 * 320 + 513 * 21 + 1024 == 3_063_957
    assert model.auxiliary_loss_weights == {}
    keras.backend.clear_session()


def test_options_bin_order_and_align_corners():
    model = create_model(
        "pspnet_mobilenetv2",
        backbone="mobilenetv2_dm05",
        num_classes=3,
        ppm_bins=[1, 2, 3, 6],
        ppm_channels=16,
        ppm_filters=32,
        ppm_dropout=0.0,
        ppm_align_corners=False,
    )
    concat = model.get_layer("ppm_concat")
    sources = [t._keras_history.operation.name for t in concat._inbound_nodes[0].input_tensors]
    assert sources[1:] == [f"ppm_bin{n}_upsample" for n in (1, 2, 3, 6)]
    assert not model.get_layer("ppm_bin2_upsample").align_corners
    assert model.get_layer("psp_bottleneck_conv").filters == 32
    assert model.get_config()["ppm_bins"] == [1, 2, 3, 6]
    assert model(_images(33, 45)).shape == (1, 33, 45, 3)
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (33, 33, 3)}, r"6 bins do not fit the 5x5 feature map.*at least 41x41"),
        ({"backbone": "mobilenetv2"}, r"aux_head=True needs a backbone.*aux_head=False"),
        ({"ppm_bins": (1, 2, 2)}, "ppm_bins must be distinct positive integers"),
        ({"ppm_bins": (1, 0)}, "every ppm_bins entry must be a positive integer"),
        ({"ppm_dropout": 1.5}, r"ppm_dropout must be a dropout rate in \[0, 1\)"),
        ({"ppm_channels": 0}, "ppm_channels must be a positive integer"),
        ({"aux_head": "yes"}, "aux_head must be True or False"),
        ({"ppm_bin": 3}, "did you mean 'ppm_bin' -> 'ppm_bins'"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("pspnet50", **kwargs)


# ------------------------------------------------------------------ exports


def _small_pspnet(**kwargs):
    model = create_model(
        "pspnet_mobilenetv2",
        backbone="mobilenetv2_dm05",
        num_classes=3,
        ppm_channels=8,
        ppm_filters=16,
        **kwargs,
    )
    return calibrate_batch_norms(model, _images(65, 73, batch=2, seed=3))


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
def test_saved_model_dynamic_sizes(tmp_path):
    """input_shape (None, None, 3): one SavedModel run at two sizes equals Keras at each."""
    model = _small_pspnet()
    report = to_saved_model(model, tmp_path / "psp")
    assert report["passed"]
    serve = tf.saved_model.load(str(tmp_path / "psp")).signatures["serve"]
    for h, w in ((57, 81), (97, 65)):
        x = _images(h, w, seed=h)
        got = serve(images=tf.constant(x))["logits"].numpy()
        expected = np.asarray(model(x, training=False))
        assert got.shape == (1, h, w, 3)
        assert np.abs(expected).max() > 0.1
        assert np.max(np.abs(got - expected)) <= 1e-4


def _tflite_check(model, path, size):
    report = to_tflite(model, path, input_size=size, tolerance=1e-3)
    ops = report["op_counts"]
    assert report["passed"] and _builtin_only(ops), ops
    assert "BATCH_MATMUL" in ops or "FULLY_CONNECTED" in ops  # the adaptive pooling
    x = _images(size, size, seed=7)
    scale = float(np.abs(np.asarray(model(x, training=False))).max())
    assert report["max_abs_diff"] <= 1e-4 * max(1.0, scale), (report["max_abs_diff"], scale)
    return report


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
def test_small_pspnet_tflite_builtins(tmp_path):
    _tflite_check(_small_pspnet(), tmp_path / "psp.tflite", 65)


@pytest.mark.slow
def test_pspnet50_tflite_builtins(tmp_path, pspnet50):  # ~110 s on 2 CPU cores
    model = calibrate_batch_norms(pspnet50, _images(49, 49, batch=2, seed=4))
    report = _tflite_check(model, tmp_path / "pspnet50.tflite", 49)
    print("pspnet50 tflite", report["max_abs_diff"], report["op_counts"])
