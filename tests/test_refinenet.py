"""RefineNet-4 (Lin et al., CVPR 2017): counts, structure, chained residual pooling, export.

Parity with the pip `refinenet` package on equal weights is `make parity`
(`benchmarks/parity/systems/refinenet.py`); these tests need no torch.
"""

import re

import keras
import numpy as np
import pytest
from conftest import calibrate_batch_norms, random_images

from keras_deeplab import create_model, list_models
from keras_deeplab.export import to_saved_model, to_tflite
from keras_deeplab.export.images import sample_images
from keras_deeplab.heads.refinenet import chained_residual_pooling, refinenet
from keras_deeplab.tflite_file import op_counts

# ResNet taps (name, channels), stride 4 first.
TAPS = (("stride_4", 256), ("stride_8", 512), ("stride_16", 1024), ("final", 2048))
# The refinement path + classifier alone, 21 classes (seed_systems.md §7, pip refinenet).
HEAD_PARAMS_21 = 75_552_277
CRP_BLOCK_PARAMS = 8_257_536  # RefineNet-101 with 4 CRP blocks minus with 2 (§7)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _head(num_classes=21, **kwargs):
    features = {name: keras.Input((None, None, c), name=name) for name, c in TAPS}
    return keras.Model(features, refinenet(features, num_classes, **kwargs))


@pytest.fixture(scope="module")
def refinenet50():
    return create_model("refinenet_resnet50", input_shape=(33, 41, 3))


def test_registered_models():
    assert list_models(architecture="refinenet") == ["refinenet_resnet101", "refinenet_resnet50"]


def test_refinenet50_counts_and_properties(refinenet50):
    model = refinenet50
    # torch count of pip refinenet RefineNet(Bottleneck, [3, 4, 6, 3]); Keras total adds the
    # BN moving statistics of the ResNet (the refinement path has no BN).
    assert _trainable(model) == 99_060_309
    assert model.count_params() == 99_113_429
    assert (model.architecture, model.backbone_name, model.output_stride) == (
        "refinenet",
        "resnet50_tv",
        32,
    )
    assert model.num_classes == 21 and model.preprocessing == "torch"
    assert model.auxiliary_loss_weights == {}


@pytest.mark.slow
def test_refinenet101_counts():
    model = create_model("refinenet_resnet101", input_shape=(33, 33, 3))
    assert _trainable(model) == 118_052_437
    assert model.count_params() == 118_157_781


def test_head_counts_and_crp_blocks():
    assert _head().count_params() == HEAD_PARAMS_21
    # The CVPR text's 2 CRP blocks: 4 fewer 3x3 convs of 512 and 12 of 256.
    assert _head(crp_blocks=2).count_params() == HEAD_PARAMS_21 - CRP_BLOCK_PARAMS
    assert _head(num_classes=3).count_params() == HEAD_PARAMS_21 - 18 * (256 * 9 + 1)


def test_logits_at_stride_4_then_input_size(refinenet50):
    model = refinenet50
    x = random_images(1, (33, 41))
    stride4 = keras.Model(model.input, model.get_layer("clf_conv").output)
    assert tuple(stride4(x).shape) == (1, 9, 11, 21)  # ceil(33 / 4), ceil(41 / 4)
    assert tuple(model(x).shape) == (1, 33, 41, 21)
    # The final resize is bilinear with align corners: the corner pixels equal the stride-4
    # logits' corner cells.
    logits, y = np.asarray(stride4(x)), np.asarray(model(x))
    np.testing.assert_allclose(y[0, 0, 0], logits[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(y[0, -1, -1], logits[0, -1, -1], atol=1e-6)


def _negated_identity(conv):
    kernel = np.zeros(conv.kernel.shape, "float32")
    channels = kernel.shape[2]
    kernel[1, 1, np.arange(channels), np.arange(channels)] = -1.0
    conv.set_weights([kernel])


def _max_pool_5(x):
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-np.inf)
    windows = [padded[:, i : i + h, j : j + w] for i in range(5) for j in range(5)]
    return np.max(windows, axis=0)


@pytest.mark.parametrize("order", ["pool_conv", "conv_pool"])
def test_chained_residual_pooling_order(order):
    """With every conv = -identity the two orders differ (max pool does not commute with
    negation); each equals its numpy formula, x + sum of the chain's outputs."""
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, chained_residual_pooling(inputs, 2, "crp", order))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _negated_identity(layer)
    x = np.random.default_rng(1).normal(size=(1, 7, 9, 4)).astype("float32")
    top, expected = x, x.copy()
    for _ in range(2):
        top = -_max_pool_5(top) if order == "pool_conv" else _max_pool_5(-top)
        expected = expected + top
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 16}, "output_stride must be 32"),
        ({"backbone": "xception65"}, "mobilenetv2_dm05"),
        ({"crp_order": "pool"}, "crp_order must be one of"),
        ({"crp_blocks": 0}, "crp_blocks must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"width": 0}, "width must be a positive integer"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("refinenet_resnet50", **kwargs)


def test_num_classes_activation_and_dropout_only_in_training(refinenet50):
    model = create_model(
        "refinenet_resnet50", num_classes=3, activation="softmax", input_shape=(33, 41, 3)
    )
    x = random_images(1, (33, 41), seed=2)
    y = np.asarray(model(x))
    assert y.shape == (1, 33, 41, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(model(x)), y)  # dropout off at inference
    rates = {layer.name: layer.rate for layer in model.layers if "dropout" in layer.name}
    assert rates == {
        "p_ims1d2_outl1_dropout": 0.5,
        "p_ims1d2_outl2_dropout": 0.5,
        "clf_dropout": 0.5,
    }


def _calibrated(model, size):
    return calibrate_batch_norms(model, random_images(2, size, seed=3))


@pytest.fixture(scope="module")
def calibrated50():
    keras.utils.set_random_seed(0)
    model = create_model("refinenet_resnet50", input_shape=(None, None, 3))
    return _calibrated(model, 33)


def _tolerance(model, images):
    """1e-4 of the logit scale on `images` (the parity harness's bound). No BatchNorm in the
    refinement path: calibrated logits reach ~2e3 on noise, ~1e5 on the exporters' smooth
    sample images."""
    scale = max(float(np.abs(model(x[None].astype("float32"))).max()) for x in images)
    return 1e-4 * max(1.0, scale)


@pytest.mark.slow
def test_refinenet50_tflite(tmp_path, calibrated50):
    """TFLite at 33x33: builtin ops only, equal to Keras (slow: a 99M-parameter graph)."""
    model = calibrated50
    tolerance = _tolerance(model, random_images(3, 33))
    report = to_tflite(model, tmp_path / "refinenet50.tflite", input_size=33, tolerance=tolerance)
    ops = op_counts(tmp_path / "refinenet50.tflite")
    assert report["passed"], report
    assert not any(op.startswith(("CUSTOM", "FLEX")) for op in ops), ops
    assert {"CONV_2D", "MAX_POOL_2D", "RESIZE_BILINEAR"} <= set(ops), ops
    assert report["max_abs_diff"] <= tolerance, report["max_abs_diff"]


@pytest.mark.slow
def test_refinenet50_saved_model(tmp_path, calibrated50):
    """SavedModel verified on the exporter's sample images (65x97, 96x128)."""
    tolerance = _tolerance(calibrated50, sample_images())
    saved = to_saved_model(calibrated50, tmp_path / "refinenet50", tolerance=tolerance)
    assert saved["passed"], saved


def test_on_mobilenetv2():
    """The cascade on MobileNetV2 x0.5's DeepLab taps (strides 4, 8, 16, 32): the adaptation
    convs take any width (the refinement path keeps its 75.5M parameters)."""
    model = create_model(
        "refinenet_resnet50", backbone="mobilenetv2_dm05", num_classes=3, input_shape=(65, 97, 3)
    )
    assert model.backbone_name == "mobilenetv2_dm05" and model.output_stride == 32
    assert tuple(model.get_layer("clf_conv").output.shape) == (None, 17, 25, 3)
    assert tuple(model(random_images(1, (65, 97))).shape) == (1, 65, 97, 3)


def test_width_scales_adaptation_and_fusion():
    """`width` (256 released): the deepest path adapts to 2 * width, the others and every
    fusion conv to width; the cascade's layer names and output stay."""
    model = create_model(
        "refinenet_resnet50",
        backbone="mobilenetv2_dm05",
        num_classes=3,
        width=32,
        input_shape=(65, 65, 3),
    )
    assert model.get_layer("p_ims1d2_outl1_dimred").filters == 64
    assert model.get_layer("p_ims1d2_outl4_dimred").filters == 32
    assert model.get_layer("mflow_conv_g1_b3_joint_varout_dimred").filters == 32
    assert model.get_layer("clf_conv").kernel.shape == (3, 3, 32, 3)
    assert tuple(model(random_images(1, (65, 65))).shape) == (1, 65, 65, 3)
    assert type(model).from_config(model.get_config()).count_params() == model.count_params()


def test_initial_logits_keep_the_feature_scale():
    """The refinement convs start as the PyTorch port's `nn.Conv2d` (U(+-1/sqrt(fan_in))):
    on unit-scale taps the logits stay O(1). With Keras' glorot default they reached a
    standard deviation of ~650 and SGD at LR 0.007 diverged (the CamVid comparison)."""
    keras.utils.set_random_seed(0)
    head = _head(num_classes=11, dropout=0)
    rng = np.random.default_rng(0)
    sizes = {"stride_4": 24, "stride_8": 12, "stride_16": 6, "final": 3}
    taps = {
        name: np.maximum(rng.normal(size=(1, sizes[name], sizes[name], c)), 0).astype("float32")
        for name, c in TAPS
    }
    logits = np.asarray(head(taps))
    assert 0 < logits.std() < 5, logits.std()
