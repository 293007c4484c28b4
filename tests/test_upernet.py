"""UperNet (Xiao et al., ECCV 2018): CSAIL and mmsegmentation widths, counts, structure, export.

Parity with `mit_semseg.models.UPerNet` on equal weights is `make parity`
(`benchmarks/parity/systems/upernet.py`); these tests need no torch.
"""

import re

import keras
import numpy as np
import pytest
from conftest import calibrate_batch_norms, random_images

from keras_deeplab import create_model, list_models
from keras_deeplab.export import to_saved_model, to_tflite
from keras_deeplab.heads.upernet import fcn_aux, upernet
from keras_deeplab.tflite_file import op_counts, op_options

TAPS = (("stride_4", 256), ("stride_8", 512), ("stride_16", 1024), ("final", 2048))
DEEP_STEM_RESNET50 = 23_631_808  # CSAIL / PSPNet 64-64-128 stem (seed_systems.md §9.1)
V1C_STEM_DELTA = 104_544  # mmseg ResNetV1c's 32-32-64 stem has this many fewer


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _features():
    return {name: keras.Input((None, None, c), name=name) for name, c in TAPS}


def _head_count(**kwargs):
    features = _features()
    return _trainable(keras.Model(features, upernet(features, 150, **kwargs)))


@pytest.fixture(scope="module")
def small():
    """UperNet on the deep-stem ResNet-50 with reduced head widths, calibrated BatchNorms."""
    keras.utils.set_random_seed(0)
    model = create_model("upernet_resnet50", num_classes=5, fpn_dim=32, ppm_channels=16)
    return calibrate_batch_norms(model, random_images(2, (65, 97), seed=3))


def test_registered_models():
    assert list_models(architecture="upernet") == [
        "upernet_lite_resnet50",
        "upernet_resnet101",
        "upernet_resnet50",
        "upernet_resnet50_mmseg",
    ]


def test_head_counts():
    # CSAIL `upernet` (fpn_dim 512, the released config) and `upernet_lite` (fpn_dim 256);
    # the 512-wide head has the mmseg UPerHead's count (seed_systems.md §8.2).
    assert _head_count(fpn_dim=512) == 40_590_486
    assert _head_count(fpn_dim=256) == 18_265_750
    features = _features()
    aux = keras.Model(features, fcn_aux(features["stride_16"], 150))
    assert _trainable(aux) == 2_398_358


def test_full_counts():
    """Counts do not depend on the input size: each built at 33x33."""
    lite = create_model("upernet_lite_resnet50", input_shape=(33, 33, 3))
    assert _trainable(lite) == 41_897_558  # CSAIL built (seed_systems.md §8.1)
    assert lite.count_params() == 41_959_254  # + BN moving statistics
    mmseg = create_model("upernet_resnet50_mmseg", input_shape=(33, 33, 3))
    assert _trainable(mmseg) == 66_516_108  # mmseg's count, on its ResNetV1c trunk
    deep = create_model("upernet_resnet50_mmseg", backbone="resnet50_deep", input_shape=(33, 33, 3))
    assert _trainable(deep) == 66_516_108 + V1C_STEM_DELTA  # the CSAIL 64-64-128 stem
    assert mmseg.auxiliary_loss_weights == {"aux": 0.4}
    official = create_model("upernet_resnet50", input_shape=(33, 33, 3))
    assert _trainable(official) == DEEP_STEM_RESNET50 + 40_590_486 == 64_222_294
    assert official.num_classes == 150 and official.auxiliary_loss_weights == {}


def test_properties_and_shapes(small):
    model = small
    assert (model.architecture, model.backbone_name, model.output_stride) == (
        "upernet",
        "resnet50_deep",
        32,
    )
    assert model.preprocessing == "torch"
    x = random_images(1, (65, 97))
    stride4 = keras.Model(model.input, model.get_layer("upernet_logits").output)
    assert tuple(stride4(x).shape) == (1, 17, 25, 5)
    assert tuple(model(x).shape) == (1, 65, 97, 5)
    # Every resize is half-pixel (torch align_corners=False), the final one included.
    resizes = [
        layer for layer in model.layers if "resize" in layer.name or "upsampled" in layer.name
    ]
    assert resizes and all(layer.align_corners is False for layer in resizes)


def test_final_resize_is_half_pixel(small):
    """The output equals tf.image.resize (half-pixel bilinear) of the stride-4 logits."""
    import tensorflow as tf

    x = random_images(1, (65, 97), seed=1)
    logits = keras.Model(small.input, small.get_layer("upernet_logits").output)(x)
    expected = tf.image.resize(logits, (65, 97), method="bilinear").numpy()
    np.testing.assert_allclose(np.asarray(small(x)), expected, atol=1e-5)


def test_ppm_orders_differ_and_mmseg_structure():
    csail = create_model("upernet_resnet50", fpn_dim=16, ppm_channels=8, input_shape=(65, 65, 3))
    mmseg = create_model(
        "upernet_resnet50",
        fpn_dim=16,
        ppm_channels=8,
        ppm_conv_first=True,
        dropout=0.1,
        input_shape=(65, 65, 3),
    )
    # CSAIL: pool -> resize -> conv (the conv sees the full map); mmseg: pool -> conv -> resize.
    assert csail.get_layer("upernet_ppm_3_conv").output.shape[1:3] == (3, 3)
    assert mmseg.get_layer("upernet_ppm_3_conv").output.shape[1:3] == (6, 6)
    assert _trainable(csail) == _trainable(mmseg)
    assert mmseg.get_layer("upernet_dropout").rate == 0.1
    with pytest.raises(ValueError):
        csail.get_layer("upernet_dropout")


def test_auxiliary_head_only_in_training():
    model = create_model(
        "upernet_resnet50_mmseg",
        num_classes=4,
        fpn_dim=16,
        ppm_channels=8,
        input_shape=(None, None, 3),
    )
    x = random_images(1, (65, 97))
    inference = model(x)
    assert tuple(inference.shape) == (1, 65, 97, 4)
    training = model(x, training=True)
    assert sorted(training) == ["aux", "logits"]
    assert tuple(training["aux"].shape) == (1, 65, 97, 4)
    # The aux head's weights are the model's (counted, saved), not in the inference graph.
    names = {w.path.split("/")[0] for w in model.weights}
    assert {"aux_fcn_0_conv", "aux_fcn_logits"} <= names


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 16}, "output_stride must be 32"),
        ({"output_stride": 8}, "output_stride must be 32"),
        ({"backbone": "xception65"}, "mobilenetv2_dm05"),
        ({"fpn_dim": 0}, "fpn_dim must be a positive integer"),
        ({"ppm_bins": []}, "ppm_bins must be a non-empty list"),
        ({"ppm_conv_first": "yes"}, "ppm_conv_first must be True"),
        ({"aux_head": 1}, "aux_head must be True or False"),
        ({"dropout": -0.1}, "dropout must be a number in [0, 1)"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("upernet_resnet50", **kwargs)


def test_num_classes_and_activation():
    model = create_model(
        "upernet_resnet50",
        num_classes=3,
        activation="softmax",
        fpn_dim=16,
        ppm_channels=8,
        input_shape=(33, 41, 3),
    )
    y = np.asarray(model(random_images(1, (33, 41))))
    assert y.shape == (1, 33, 41, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert model.num_classes == 3 and model.activation == "softmax"


def test_keras_round_trip(small, tmp_path):
    small.save(tmp_path / "upernet.keras")
    same = keras.models.load_model(tmp_path / "upernet.keras")
    assert same.get_config() == small.get_config()
    x = random_images(1, (65, 97), seed=4)
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(small(x)))


def _tolerance(model, size, relative=1e-4):
    """`relative` x the logit scale (the parity harness's bound is 1e-4): calibrated logits
    reach ~1e2."""
    scale = max(float(np.abs(model(random_images(1, size, seed=s))).max()) for s in range(3))
    return relative * max(1.0, scale)


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
def test_saved_model(small, tmp_path):
    # The serving graph (its own preprocessing arithmetic) vs Keras: ~1.3e-4 of the logit
    # scale on this randomly initialised, BN-calibrated model; class maps agree.
    tolerance = _tolerance(small, 65, relative=5e-4)
    saved = to_saved_model(small, tmp_path / "upernet_saved", tolerance=tolerance)
    assert saved["passed"], saved


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
def test_tflite_builtins(small, tmp_path):
    # TFLite's reference kernels vs TF (oneDNN) float32: measured 0.5-1.1e-4 of the logit
    # scale with the reduced head (per-layer relative errors ~1e-5; the logits cancel).
    tolerance = _tolerance(small, 65, relative=5e-4)
    report = to_tflite(small, tmp_path / "upernet.tflite", input_size=65, tolerance=tolerance)
    ops = op_counts(tmp_path / "upernet.tflite")
    assert report["passed"], report
    assert not any(op.startswith(("CUSTOM", "FLEX")) for op in ops), ops
    assert "RESIZE_BILINEAR" in ops and ("BATCH_MATMUL" in ops or "FULLY_CONNECTED" in ops), ops
    resizes = [
        op for op in op_options(tmp_path / "upernet.tflite") if op["op"] == "RESIZE_BILINEAR"
    ]
    assert all(op.get("half_pixel_centers") and not op.get("align_corners") for op in resizes)
    assert report["max_abs_diff"] <= tolerance, report["max_abs_diff"]


def test_on_mobilenetv2():
    """The head on MobileNetV2 x0.5's DeepLab taps (strides 4, 8, 16, 32) at output stride 32."""
    model = create_model(
        "upernet_resnet50",
        backbone="mobilenetv2_dm05",
        num_classes=3,
        fpn_dim=16,
        ppm_channels=8,
        input_shape=(65, 97, 3),
    )
    assert model.backbone_name == "mobilenetv2_dm05" and model.output_stride == 32
    assert tuple(model.get_layer("upernet_logits").output.shape) == (None, 17, 25, 3)
    assert tuple(model(random_images(1, (65, 97))).shape) == (1, 65, 97, 3)
