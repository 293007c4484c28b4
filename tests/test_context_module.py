"""Yu & Koltun's context module and Dilation8: counts, the identity initialisation, the
front-end shape trace, reflection padding, the 8x zoom, the head on another backbone."""

import keras
import numpy as np
import pytest
from conftest import calibrate_batch_norms

from keras_deeplab import SegmentationModel, create_model
from keras_deeplab.architectures.dilation import ReflectionPadding, Zoom
from keras_deeplab.export import to_saved_model, to_tflite
from keras_deeplab.heads.context import ContextIdentity, context_module


def _images(size, seed=0, batch=1):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _module(context, channels=21, noise=None):
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, context_module(inputs, channels, context, noise=noise))


@pytest.fixture(scope="module")
def voc():
    """dilation8_voc, any input size (141M parameters: built once)."""
    model = create_model("dilation8_voc")
    yield model
    keras.backend.clear_session()


@pytest.mark.parametrize(("context", "count"), [("basic", 28_392), ("large", 6_803_139)])
def test_module_counts(context, count):
    model = _module(context)
    assert model.count_params() == _trainable(model) == count
    widths = [layer.filters for layer in model.layers if hasattr(layer, "filters")]
    rates = [layer.dilation_rate[0] for layer in model.layers if hasattr(layer, "filters")]
    assert rates == [1, 1, 2, 4, 8, 16, 1, 1]
    if context == "large":
        assert widths == [42, 42, 84, 168, 336, 672, 672, 21]
    else:
        assert widths == [21] * 8


def test_identity_initialised_basic_module_maps_non_negative_input_to_itself():
    model = _module("basic")
    x = np.random.default_rng(0).uniform(0, 50, (2, 37, 45, 21)).astype("float32")
    x[0, :5] = 0.0  # zeros and values next to the zero padding stay put too
    np.testing.assert_array_equal(np.asarray(model(x)), x)
    # Negative scores are clipped by the first ReLU, nothing else changes.
    z = np.random.default_rng(1).normal(0, 5, (1, 19, 23, 21)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model(z)), np.maximum(z, 0))


def test_generalised_identity_of_the_large_module_without_noise():
    """Widening C -> 2C -> ... -> 32C -> C with weights C / c_out in the same group keeps
    the identity (the sums of the copies are exact up to rounding)."""
    model = _module("large", noise=0.0)
    x = np.random.default_rng(2).uniform(0, 10, (1, 21, 26, 21)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), x, rtol=1e-6, atol=1e-6)


def test_context_identity_initializer():
    kernel = np.asarray(ContextIdentity(groups=21)((3, 3, 21, 42)))
    centre = kernel[1, 1]
    assert np.count_nonzero(kernel) == 42 and np.count_nonzero(kernel[0]) == 0
    for b in range(42):  # output b reads input b // 2 with weight 21 / 42
        assert np.flatnonzero(centre[:, b]).tolist() == [b // 2]
    np.testing.assert_array_equal(centre[centre != 0], 0.5)
    final = np.asarray(ContextIdentity(groups=21)((1, 1, 672, 21)))[0, 0]
    # ctx_final sums the 32 copies of each class (each carrying x / 32) with weight 21 / 21.
    np.testing.assert_array_equal(final, (np.arange(672)[:, None] // 32 == np.arange(21)) * 1.0)
    noisy = np.asarray(ContextIdentity(groups=21, noise=0.01, seed=3)((3, 3, 42, 84)))
    assert np.count_nonzero(noisy) == noisy.size and np.abs(noisy[0]).max() < 0.25 * 0.1
    np.testing.assert_array_equal(noisy[1, 1][np.arange(84) // 2, np.arange(84)], 0.25)
    same = ContextIdentity.from_config(ContextIdentity(21, 0.01, 3).get_config())
    np.testing.assert_array_equal(np.asarray(same((3, 3, 42, 84))), noisy)


def test_default_large_module_has_noise_to_break_symmetry():
    model = _module("large")
    kernel = np.asarray(model.get_layer("ctx_conv1_2").kernel)
    assert not np.array_equal(kernel[1, 1][:, 0], kernel[1, 1][:, 1])  # two copies of class 0
    basic = np.asarray(_module("basic").get_layer("ctx_conv1_2").kernel)
    np.testing.assert_array_equal(basic[1, 1], np.eye(21))


@pytest.mark.parametrize("size", [1, 3, 5, 40, 200])
def test_reflection_padding_is_border_reflect_101_at_any_size(size):
    x = np.random.default_rng(size).normal(0, 1, (1, size, size + 2, 2)).astype("float32")
    y = np.asarray(ReflectionPadding(186)(x))
    expected = np.pad(x, ((0, 0), (186, 186), (186, 186), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(y, expected)
    line = np.asarray(ReflectionPadding(2)(np.arange(4.0).reshape(1, 1, 4, 1)))[0, 2, :, 0]
    assert line.tolist() == [2, 1, 0, 1, 2, 3, 2, 1]  # gfedcb|abcdefgh|gfedcba


def _interp_map(scores, zoom, height, width):
    """Dilation's `util.interp_map` formula ([H, W, C]), border rows clamped."""
    out = np.zeros((height, width, scores.shape[-1]), np.float64)
    rows, cols = scores.shape[:2]
    for h in range(height):
        for w in range(width):
            r0, c0 = h // zoom, w // zoom
            r1, c1 = min(r0 + 1, rows - 1), min(c0 + 1, cols - 1)
            rt, ct = h / zoom - r0, w / zoom - c0
            v0 = rt * scores[r1, c0] + (1 - rt) * scores[r0, c0]
            v1 = rt * scores[r1, c1] + (1 - rt) * scores[r0, c1]
            out[h, w] = (1 - ct) * v0 + ct * v1
    return out


@pytest.mark.parametrize(
    ("scores_hw", "out_hw"), [((5, 6), (37, 45)), ((5, 6), (40, 48)), ((1, 1), (8, 8))]
)
def test_zoom_is_the_official_interp_map(scores_hw, out_hw):
    scores = np.random.default_rng(4).normal(0, 1, (1, *scores_hw, 3)).astype("float32")
    reference = np.zeros((1, *out_hw, 1), "float32")
    y = np.asarray(Zoom(8)([scores, reference]))
    assert y.shape == (1, *out_hw, 3)
    np.testing.assert_allclose(y[0], _interp_map(scores[0], 8, *out_hw), atol=1e-5)


def test_dilation8_counts_and_front_end_trace(voc):
    assert voc.count_params() == _trainable(voc) == 141_149_720
    assert voc.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    assert voc.get_layer("fc6").dilation_rate == (4, 4)
    assert [voc.get_layer(f"block5_conv{i}").dilation_rate for i in (1, 2, 3)] == [(2, 2)] * 3
    names = {layer.name for layer in voc.layers}
    assert {"pool1", "pool2", "pool3"} <= names and not {"pool4", "pool5"} & names
    # A 528 px tile + 2 x 186 margin = the deploy's 900 input -> 66 x 66 class scores.
    probe = keras.Model(
        voc.input,
        [voc.get_layer(n).output for n in ("label_margin", "final", "ctx_final")] + [voc.output],
    )
    shapes = probe.compute_output_shape((1, 528, 528, 3))
    assert [tuple(s[1:3]) for s in shapes] == [(900, 900), (66, 66), (66, 66), (528, 528)]
    # Any size: ceil(H / 8) scores, zoomed and cropped back to H.
    shapes = probe.compute_output_shape((1, 33, 41, 3))
    assert [tuple(s[1:3]) for s in shapes] == [(405, 413), (5, 6), (5, 6), (33, 41)]
    assert (voc.architecture, voc.backbone_name, voc.output_stride) == ("dilation", None, 8)
    assert (voc.num_classes, voc.preprocessing, voc.feature_info) == (21, "caffe", None)


def test_dilation8_runs_at_small_sizes(voc):
    for size in [(17, 23), (8, 8)]:
        y = np.asarray(voc(_images(size)))
        assert y.shape == (1, *size, 21) and np.isfinite(y).all()


def test_dilation8_camvid_count():
    model = create_model("dilation8_camvid", input_shape=(8, 8, 3))
    assert model.count_params() == _trainable(model) == 134_313_443
    assert model.num_classes == 11 and model.get_layer("ctx_conv5_1").filters == 11
    keras.backend.clear_session()


def test_context_head_on_another_backbone():
    basic = create_model("context_mobilenetv2", backbone="mobilenetv2_dm05", num_classes=21)
    large = create_model(
        "context_mobilenetv2", backbone="mobilenetv2_dm05", num_classes=21, context="large"
    )
    assert large.count_params() - basic.count_params() == 6_803_139 - 28_392
    assert basic(_images((33, 41))).shape == (1, 33, 41, 21)
    assert (basic.architecture, basic.output_stride) == ("context", 8)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("context_mobilenetv2", {"context": "medium"}, r"context must be one of \('basic'"),
        ("context_mobilenetv2", {"context": None}, "context must be one of"),
        ("dilation8_voc", {"context": "huge"}, "context must be one of"),
        ("dilation8_voc", {"backbone": "vgg16"}, "takes no backbone"),
        ("dilation8_voc", {"output_stride": 16}, "output stride 8 only"),
        ("dilation8_voc", {"dropout": 2}, "dropout must be"),
    ],
)
def test_bad_options_are_one_clear_error(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **options)


@pytest.fixture(scope="module")
def small_context():
    model = create_model(
        "context_mobilenetv2",
        backbone="mobilenetv2_dm05",
        context="large",
        num_classes=3,
        activation="softmax",
    )
    return calibrate_batch_norms(model, _images((33, 41), seed=5, batch=4))


def test_context_keras_round_trip(small_context, tmp_path):
    x = _images((33, 41), seed=6)
    small_context.save(tmp_path / "context.keras")
    same = keras.models.load_model(tmp_path / "context.keras")
    assert isinstance(same, SegmentationModel)
    assert same.get_config() == small_context.get_config()
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(small_context(x)))


@pytest.mark.slow  # suite time: 24 s; benchmarks/seeds_export.py exports every seed model
def test_context_tflite_builtin_ops(small_context, tmp_path):
    report = to_tflite(small_context, tmp_path / "context.tflite", input_size=(33, 41))
    ops = report["op_counts"]
    assert report["passed"] and report["max_abs_diff"] < 1e-4, report
    assert not [op for op in ops if "FLEX" in op or "CUSTOM" in op], ops
    print("context_mobilenetv2 (large, dm05) tflite", ops, report["max_abs_diff"])


@pytest.mark.slow
def test_dilation8_exports(voc, tmp_path):
    """TFLite (builtin ops, verified against Keras), SavedModel and .keras of the full
    141M-parameter net at a small input size."""
    report = to_tflite(voc, tmp_path / "dilation8.tflite", input_size=(24, 32))
    ops = report["op_counts"]
    assert report["passed"], report
    assert not [op for op in ops if "FLEX" in op or "CUSTOM" in op], ops
    assert {"GATHER", "RESIZE_BILINEAR"} <= set(ops), ops
    print("dilation8_voc tflite", ops, report["max_abs_diff"])
    saved = to_saved_model(voc, tmp_path / "saved")
    assert saved["passed"], saved
    x = _images((17, 23), seed=7)
    voc.save(tmp_path / "voc.keras")
    same = keras.models.load_model(tmp_path / "voc.keras")
    assert same.get_config() == voc.get_config()
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(voc(x)))
