"""U-Net (Ronneberger et al. 2015): counts, the 572 -> 388 shape trace, valid sizes,
centre-cropped skips in the released net's concat order, the paper's init, same-padding
variant, bad input, `.keras` round trip with one channel, TFLite export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab import SegmentationModel, create_model
from keras_deeplab.architectures import unet
from keras_deeplab.export import to_tflite

PAPER_COUNT = 31_030_658  # 1 input channel, 2 classes (seed_systems.md §4.1)
RGB_COUNT = 31_031_810  # 3 input channels, 2 classes


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, *shape)).astype("float32")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ---------------------------------------------------------------- the paper's network


@pytest.fixture(scope="module")
def paper_net():
    """The full-width valid U-Net at 572x572x1 (built, never run: shapes are static)."""
    model = create_model("unet", input_shape=(572, 572, 1))
    yield model
    keras.backend.clear_session()


def test_paper_network_count_and_572_to_388(paper_net):
    assert paper_net.count_params() == PAPER_COUNT
    assert _trainable(paper_net) == PAPER_COUNT  # no BatchNorm: every weight trains
    assert tuple(paper_net.output.shape) == (None, 388, 388, 2)
    assert (paper_net.architecture, paper_net.backbone_name, paper_net.feature_info) == (
        "unet",
        None,
        None,
    )
    assert (paper_net.num_classes, paper_net.preprocessing, paper_net.output_stride) == (
        2,
        "unit",
        16,
    )
    config = paper_net.get_config()
    assert (config["padding"], config["base_filters"], config["depth"]) == ("valid", 64, 4)
    assert config["dropout"] == 0.5 and config["batch_norm"] is False
    # 23 conv layers: 18 3x3, 4 up-convolutions, the 1x1 classifier.
    kinds = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
    convs = [layer for layer in paper_net.layers if isinstance(layer, kinds)]
    assert len(convs) == 23
    assert sum(isinstance(layer, keras.layers.Conv2DTranspose) for layer in convs) == 4
    widths = [paper_net.get_layer(f"down{i}_conv2").filters for i in (1, 2, 3, 4)]
    assert widths + [paper_net.get_layer("bottom_conv2").filters] == [64, 128, 256, 512, 1024]
    assert [paper_net.get_layer(f"up{i}_upconv").filters for i in (4, 3, 2, 1)] == [
        512,
        256,
        128,
        64,
    ]


def test_same_padding_counts_equal_the_paper_network():
    """Padding moves no weight: unet_same at base 64, depth 4 has the paper's counts."""
    assert create_model("unet_same", input_shape=(33, 33, 1)).count_params() == PAPER_COUNT
    rgb = create_model("unet_same", input_shape=(33, 33, 3))
    assert rgb.count_params() == _trainable(rgb) == RGB_COUNT
    keras.backend.clear_session()


def test_shape_trace_at_572():
    """Every level's size at 572 (seed_systems.md §4.1), at width 4 (sizes ignore widths)."""
    model = create_model("unet", base_filters=4, input_shape=(572, 572, 1))
    size = {layer.name: layer.output.shape[1] for layer in model.layers}
    assert [size[f"down{i}_conv{j}"] for i in (1, 2, 3, 4) for j in (1, 2)] == [
        570,
        568,
        282,
        280,
        138,
        136,
        66,
        64,
    ]
    assert [size[f"pool{i}"] for i in (1, 2, 3, 4)] == [284, 140, 68, 32]
    assert [size["bottom_conv1"], size["bottom_conv2"]] == [30, 28]
    up = [size[f"up{i}_{name}"] for i in (4, 3, 2, 1) for name in ("upconv", "conv1", "conv2")]
    assert up == [56, 54, 52, 104, 102, 100, 200, 198, 196, 392, 390, 388]
    # The skips are cropped 568 -> 392, 280 -> 200, 136 -> 104, 64 -> 56.
    assert [size[f"up{i}_crop"] for i in (1, 2, 3, 4)] == [392, 200, 104, 56]
    assert size["logits"] == 388


# ---------------------------------------------------------------- valid sizes


def test_valid_sizes_rule():
    assert [unet.valid_output_size(s) for s in (572, 444, 892, 508, 188)] == [
        388,
        260,
        708,
        324,
        4,
    ]
    valid = [s for s in range(1, 700) if unet.valid_output_size(s) is not None]
    assert valid == list(range(188, 700, 16)) and all(s % 16 == 12 for s in valid)
    assert unet.valid_border() == 92 and unet.valid_border(5) == 188
    assert unet.nearest_valid_sizes(512) == (508, 524)
    assert unet.nearest_valid_sizes(572) == (556, 588)
    assert unet.nearest_valid_sizes(100) == (None, 188)
    for size in range(1, 300):  # overlap-tile: a valid padded size whose output covers `size`
        before, after = unet.overlap_tile_padding(size)
        out = unet.valid_output_size(size + before + after)
        assert before == 92 and out is not None and size <= out < size + 16


def test_invalid_static_size_is_one_error_naming_the_nearest_valid_sizes():
    with pytest.raises(ValueError, match=r"input height is 500: use 492 or 508") as info:
        create_model("unet", input_shape=(500, 572, 1))
    assert "12 mod 16" in str(info.value) and "unet_same" in str(info.value)
    with pytest.raises(ValueError, match=r"input width is 100: use 188 \(the smallest\)"):
        create_model("unet", input_shape=(188, 100, 1))


def test_invalid_dynamic_size_is_caught_when_called():
    model = create_model("unet", base_filters=2, input_shape=(None, None, 1))
    assert model(_images((204, 188, 1))).shape == (1, 20, 4, 2)
    with pytest.raises(ValueError, match=r"input height is 200: use 188 or 204"):
        model(_images((200, 188, 1)))
    # A graph traced with unknown sizes (SavedModel signatures): an in-graph assertion.
    run = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 1])])
    assert run(_images((188, 220, 1))).shape == (1, 4, 36, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="12 mod 16"):
        run(_images((188, 190, 1)))


def test_outputs_tile_seamlessly():
    """Overlap-tile: an interior window shifted by a multiple of 16 gives exactly the matching
    part of the whole image's output (the valid network is translation equivariant)."""
    model = create_model("unet", base_filters=4, input_shape=(None, None, 1))
    x = _images((236, 252, 1))
    whole = np.asarray(model(x))  # 52 x 68
    part = np.asarray(model(x[:, 32:220, 48:236]))  # 188 x 188 -> 4 x 4
    np.testing.assert_allclose(part[0], whole[0, 32:36, 48:52], atol=1e-5)


def _footprint(model, level, size=188):
    """Input pixels the (0, 0) logits depend on through the skip of `level` and the levels
    above it, with the up-sampled half of `up{level}`'s concatenation cut off."""
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            # constant positive weights: every path alive, no ReLU clips
            fan_in = int(np.prod(layer.kernel.shape)) // layer.filters
            layer.kernel.assign(np.full(layer.kernel.shape, 1.0 / fan_in, "float32"))
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    conv = model.get_layer(f"up{level}_conv1")
    kernel = conv.kernel.numpy()
    kernel[:, :, : conv.filters, :] = 0.0  # [up-sampled, skip]: the first half is up-sampled
    conv.kernel.assign(kernel)
    x = tf.constant(_images((size, size, 1)) + 1.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)[0, 0, 0, 0]
    rows, cols = np.nonzero(np.asarray(tape.gradient(y, x))[0, ..., 0])
    return (rows.min(), rows.max()), (cols.min(), cols.max())


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_skips_are_centre_cropped_and_concatenated_after_the_upsampled_map(level):
    """Output pixel (0, 0) is centred on input (92, 92): the skip path alone must see a window
    centred there too (a top-left crop would put it at the image corner); at level 1 it is
    exactly the 9x9 window of the two 3x3 convs on each side. Cutting the first half of the
    concatenation leaving the skip path is the released net's [up-sampled, skip] order."""
    model = create_model("unet", base_filters=2, dropout=0.0, input_shape=(188, 188, 1))
    for low, high in _footprint(model, level):
        # Max pooling routes each gradient to one pixel of its 2x2 window, which moves the
        # ends by up to 2**k - 1 pixels after k poolings. A top-left crop would put the
        # window at the image corner (crop offsets 88, 40 * 2, 16 * 4, 4 * 8 pixels away).
        assert abs(low + high - 2 * 92) <= 2**level
        # The skip path only: narrower than the whole network's 185-pixel field (which a
        # cut of the skip half, the [skip, up-sampled] order, would leave).
        assert high - low < 2 ** (level + 3)
        if level == 1:
            assert (low, high) == (88, 96)
    keras.backend.clear_session()


def test_the_papers_initialisation():
    """Kernels N(0, 2 / fan_in), not truncated (Keras' HeNormal truncates at 2 std)."""
    model = create_model("unet", input_shape=(188, 188, 1))
    kernel = model.get_layer("down4_conv2").kernel.numpy()  # 3x3x512x512
    std = np.sqrt(2.0 / (9 * 512))
    assert abs(kernel.std() / std - 1.0) < 0.01 and abs(kernel.mean()) < 0.01 * std
    assert np.abs(kernel).max() > 3.0 * std
    assert not np.any(model.get_layer("down4_conv2").bias.numpy())
    keras.backend.clear_session()


# ---------------------------------------------------------------- same padding


@pytest.mark.parametrize(
    ("shape", "depth"), [((37, 50, 3), 4), ((1, 1, 1), 4), ((33, 41, 4), 3), ((65, 31, 2), 5)]
)
def test_same_padding_takes_any_size_and_channel_count(shape, depth):
    model = create_model(
        "unet_same", base_filters=2, depth=depth, num_classes=3, input_shape=(None, None, shape[2])
    )
    assert model.output_stride == 2**depth
    assert model(_images(shape)).shape == (1, *shape[:2], 3)


def test_same_padding_options():
    plain = create_model("unet_same", base_filters=8, input_shape=(None, None, 1))
    with_bn = create_model(
        "unet_same", base_filters=8, batch_norm=True, input_shape=(None, None, 1)
    )
    convs_3x3 = 2 * 4 * 2 + 2  # two per level on both paths, two at the bottom
    widths = sum(2 * 8 * 2**i for i in range(4)) * 2 + 2 * 8 * 16
    # BatchNorm replaces each 3x3 conv's bias (-filters) by gamma, beta, mean, variance.
    assert with_bn.count_params() - plain.count_params() == 3 * widths
    assert _trainable(with_bn) - _trainable(plain) == widths
    assert sum("_bn" in layer.name for layer in with_bn.layers) == convs_3x3
    assert not any(
        "dropout" in layer.name
        for layer in SegmentationModel.from_config({**plain.get_config(), "dropout": 0.0}).layers
    )
    assert [layer.name for layer in plain.layers if "dropout" in layer.name] == [
        "down4_dropout",
        "bottom_dropout",
    ]
    x = _images((45, 45, 1))
    np.testing.assert_array_equal(plain(x), plain(x))  # dropout is training-only
    keras.backend.clear_session()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet50"}, "U-Net has no backbone"),
        ({"backbone": "resnet50", "input_shape": (None, None, 3)}, "U-Net has no backbone"),
        ({"padding": "valud"}, "padding must be 'valid'"),
        ({"depth": 6}, r"depth \(number of poolings\) must be one of \(3, 4, 5\)"),
        ({"output_stride": 8}, "output stride is 2\\*\\*depth = 16"),
        ({"base_filters": 0}, "base_filters must be an integer >= 1"),
        ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
        ({"batch_norm": "yes"}, "batch_norm must be True or False"),
        ({"input_shape": (188, 188, 0)}, "positive channel count"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("unet", **kwargs)


# ---------------------------------------------------------------- saving and export


def test_keras_round_trip_with_one_channel(tmp_path):
    model = create_model("unet", base_filters=4, input_shape=(None, None, 1))
    x = _images((220, 188, 1), seed=3)
    path = tmp_path / "unet.keras"
    model.save(path)
    same = keras.models.load_model(path)
    assert type(same) is SegmentationModel and same.get_config() == model.get_config()
    assert same.input_shape == (None, None, None, 1)
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match="use 188 or 204"):
        same(_images((190, 188, 1)))


@pytest.mark.parametrize(("name", "size", "out"), [("unet", 188, 4), ("unet_same", 45, 45)])
def test_tflite_export_builtin_ops_only(name, size, out, tmp_path):
    model = create_model(name, base_filters=4, input_shape=(None, None, 1))
    report = to_tflite(model, tmp_path / f"{name}.tflite", input_size=size)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    assert report["input"]["shape"] == [1, size, size, 1]
    assert report["output"]["shape"] == [1, out, out, 2]
    ops = set(report["op_counts"])
    assert {"CONV_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "CONCATENATION"} <= ops
    assert all(op.isupper() and not op.startswith(("FLEX", "CUSTOM")) for op in ops), ops
    print(name, json.dumps(report["op_counts"]), report["max_abs_diff"])


def test_segmenter_predicts_whole_images_by_overlap_tile():
    """The Segmenter mirror-pads for the valid U-Net (the paper's overlap-tile strategy) and
    returns labels at the image size; the logits equal a direct call on the padded image."""
    from keras_deeplab.evaluation import Segmenter

    model = create_model("unet", base_filters=2, input_shape=(None, None, 1))
    assert model.overlap_tile_padding(100) == (92, 92) and model.overlap_tile_padding(130) == (
        92,
        94,
    )
    assert create_model("unet_same", base_filters=2).overlap_tile_padding(100) is None
    image = _images((100, 130, 1), seed=4)[0]
    probabilities = Segmenter(model).predict_proba(image)[0]
    assert probabilities.shape == (100, 130, 2)
    padded = np.pad(image, ((92, 92), (92, 94), (0, 0)), mode="reflect")
    logits = np.asarray(model(padded[None]))[0, :100, :130]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.slow
def test_model_export_with_one_channel_and_unknown_sizes(tmp_path):
    """`model.export()` (SavedModel, None height/width): same logits, and a size the valid
    network cannot take stops at the in-graph assertion with the rule."""
    model = create_model("unet", base_filters=2)
    model.export(str(tmp_path / "unet"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "unet"))
    x = _images((204, 188, 1), seed=6)
    np.testing.assert_allclose(served.serve(x).numpy(), np.asarray(model(x)), atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="12 mod 16"):
        served.serve(_images((200, 188, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "unet_same"])
def test_saved_model_export_with_one_channel(name, tmp_path):
    """keras_deeplab.export.to_saved_model verifies the valid U-Net on mirror-padded samples."""
    from keras_deeplab.export import to_saved_model

    model = create_model(name, base_filters=2, input_shape=(None, None, 1))
    report = to_saved_model(model, tmp_path / name)
    assert report["passed"], report
