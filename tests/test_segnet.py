"""SegNet and SegNet-Basic: counts, the 360x480 shape trace, the prototxt's layers, equality
with an argmax-indexed reference forward pass, TFLite (builtins only), bad input, and the
median-frequency class weights of the SegNet recipe."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import calibrate_batch_norms, make_pairs, random_images, randomize_batch_norms

from keras_deeplab import SegmentationModel, create_model
from keras_deeplab.architectures.segnet import LocalResponseNormalization
from keras_deeplab.training.class_weights import (
    SEGNET_CAMVID_WEIGHTS,
    class_pixel_counts,
    median_frequency_weights,
)
from keras_deeplab.unpooling import MaxPoolingWithMask, MaxUnpooling

# seed_systems.md §5 (computed from the prototxts), 11 CamVid classes.
COUNTS = {"segnet": (29_449_355, 29_465_227), "segnet_basic": (1_416_587, 1_417_611)}
# segnet_train.prototxt's decoder: (conv, filters) in order.
SEGNET_DECODER = [
    ("conv5_3_D", 512),
    ("conv5_2_D", 512),
    ("conv5_1_D", 512),
    ("conv4_3_D", 512),
    ("conv4_2_D", 512),
    ("conv4_1_D", 256),
    ("conv3_3_D", 256),
    ("conv3_2_D", 256),
    ("conv3_1_D", 128),
    ("conv2_2_D", 128),
    ("conv2_1_D", 64),
    ("conv1_2_D", 64),
    ("conv1_1_D", 11),
]


@pytest.fixture(scope="module")
def segnet():
    return create_model("segnet")  # 11 classes, any input size


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_parameter_counts(segnet):
    basic = create_model("segnet_basic")
    for name, model in (("segnet", segnet), ("segnet_basic", basic)):
        assert (_trainable(model), model.count_params()) == COUNTS[name], name


def test_shape_trace_at_360x480():
    expected = {
        "segnet": {
            "pool1": (180, 240),
            "pool2": (90, 120),
            "pool3": (45, 60),
            "pool4": (23, 30),
            "pool5": (12, 15),
            "upsample5": (23, 30),
            "upsample4": (45, 60),
            "upsample3": (90, 120),
            "upsample2": (180, 240),
            "upsample1": (360, 480),
        },
        "segnet_basic": {
            "pool1": (180, 240),
            "pool2": (90, 120),
            "pool3": (45, 60),
            "pool4": (23, 30),
            "upsample4": (45, 60),
            "upsample3": (90, 120),
            "upsample2": (180, 240),
            "upsample1": (360, 480),
        },
    }
    for name, sizes in expected.items():
        model = SegmentationModel(name, num_classes=11, input_shape=(360, 480, 3))
        for layer, size in sizes.items():
            out = model.get_layer(layer).output
            out = out[0] if isinstance(out, (list, tuple)) else out  # pooled, not the mask
            assert tuple(out.shape[1:3]) == size, (name, layer)
        assert tuple(model.output.shape) == (None, 360, 480, 11)


def test_layers_are_the_prototxts(segnet):
    convs = [
        (layer.name, layer.filters)
        for layer in segnet.layers
        if layer.name.endswith("_D") and hasattr(layer, "filters")
    ]
    assert convs == SEGNET_DECODER
    assert segnet.get_layer("conv1_1").filters == 64 and segnet.get_layer("conv5_3").filters == 512
    names = {layer.name for layer in segnet.layers}
    assert "conv1_1_D_bn" not in names and "conv1_1_D_relu" not in names  # plain classifier
    assert segnet.get_layer("conv1_1_D").kernel_size == (3, 3)
    assert len([n for n in names if n.endswith("_bn")]) == 13 + 12
    assert all(segnet.get_layer(n).use_bias for n in ("conv1_1", "conv3_2_D", "conv1_1_D"))
    np.testing.assert_allclose(segnet.get_layer("conv2_1_bn").beta.numpy(), 0.001)  # shift filler

    basic = create_model("segnet_basic")
    names = [layer.name for layer in basic.layers]
    assert isinstance(basic.get_layer("norm"), LocalResponseNormalization)
    assert names.index("norm") < names.index("conv1")
    assert [n for n in names if n.endswith("_relu")] == [f"conv{i}_relu" for i in (1, 2, 3, 4)]
    assert [n for n in names if n.startswith("conv_decode") and n.endswith("_bn")] == [
        f"conv_decode{i}_bn" for i in (4, 3, 2, 1)
    ]
    assert basic.get_layer("conv_decode1").kernel_size == (7, 7)
    assert basic.get_layer("conv_classifier").kernel_size == (1, 1)
    for model, stride in ((segnet, 32), (basic, 16)):
        assert model.backbone_name is None and model.preprocessing == "bgr"
        assert model.output_stride == stride and model.num_classes == 11


def test_lrn_is_caffes():
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 4, 7)).astype("float32")
    y = np.asarray(LocalResponseNormalization(5, 1e-4, 0.75)(x))
    padded = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (2, 2)])
    window = sum(padded[..., k : k + 7] for k in range(5))
    np.testing.assert_allclose(y, x / (1 + 1e-4 / 5 * window) ** 0.75, rtol=1e-5)
    with pytest.raises(ValueError, match="local_size must be an odd positive integer"):
        LocalResponseNormalization(4)


def _reference_segnet_basic(model, x):
    """SegNet-Basic's forward pass with `tf.nn.max_pool_with_argmax` indices and scatter
    (the Caffe `Upsample` semantics), from the Keras model's weights, in inference mode."""

    def conv_bn(h, name, relu):
        conv, bn = model.get_layer(name), model.get_layer(f"{name}_bn")
        h = tf.nn.conv2d(h, conv.kernel, 1, "SAME") + conv.bias
        h = tf.nn.batch_normalization(
            h, bn.moving_mean, bn.moving_variance, bn.beta, bn.gamma, bn.epsilon
        )
        return tf.nn.relu(h) if relu else h

    def pool(h):
        _, height, width, _ = h.shape
        padded = tf.pad(h, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]], constant_values=-1e30)
        pooled, argmax = tf.nn.max_pool_with_argmax(
            padded, 2, 2, "VALID", include_batch_in_index=True
        )
        return pooled, (argmax, padded.shape, (height, width))

    def unpool(h, indices):
        argmax, padded_shape, (height, width) = indices
        flat = tf.scatter_nd(
            tf.reshape(argmax, [-1, 1]), tf.reshape(h, [-1]), [int(np.prod(padded_shape))]
        )
        return tf.reshape(flat, padded_shape)[:, :height, :width, :]

    h = tf.convert_to_tensor(x)[..., ::-1]  # "bgr": raw BGR 0..255
    h = tf.nn.local_response_normalization(h, 2, 1.0, 1e-4 / 5, 0.75)
    indices = {}
    for block in range(1, 5):
        h, indices[block] = pool(conv_bn(h, f"conv{block}", True))
    for block in range(4, 0, -1):
        h = conv_bn(unpool(h, indices[block]), f"conv_decode{block}", False)
    classifier = model.get_layer("conv_classifier")
    return (tf.nn.conv2d(h, classifier.kernel, 1, "SAME") + classifier.bias).numpy()


@pytest.mark.parametrize("size", [(1, 1), (16, 16), (33, 41), (45, 61)])
def test_segnet_basic_equals_argmax_unpooling_reference(size):
    model = create_model("segnet_basic", num_classes=5, filters=8, kernel_size=3)
    randomize_batch_norms(model, seed=1)
    x = random_images(2, size, seed=sum(size))
    y = np.asarray(model(x))
    assert y.shape == (2, *size, 5)
    reference = _reference_segnet_basic(model, x)
    np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_segnet_any_size(segnet):
    for size in ((1, 1), (33, 41), (37, 50)):
        assert segnet(random_images(1, size)).shape == (1, *size, 11)


def test_unpooling_layers_in_the_graph(segnet):
    pools = [layer for layer in segnet.layers if isinstance(layer, MaxPoolingWithMask)]
    unpools = [layer for layer in segnet.layers if isinstance(layer, MaxUnpooling)]
    assert [p.name for p in pools] == [f"pool{i}" for i in range(1, 6)]
    assert [u.name for u in unpools] == [f"upsample{i}" for i in range(5, 0, -1)]


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match=r"segnet builds its own encoder .* takes no backbone"):
        create_model("segnet", backbone="xception65")
    with pytest.raises(ValueError, match=r"segnet_basic .*output_stride is 16"):
        create_model("segnet_basic", output_stride=8)
    with pytest.raises(ValueError, match=r"filters must be a positive integer"):
        create_model("segnet_basic", filters=0)
    with pytest.raises(ValueError, match=r"unknown argument 'filter'.*'filters'"):
        create_model("segnet_basic", filter=8)
    with pytest.raises(ValueError, match=r"unknown argument 'filters'"):
        create_model("segnet", filters=8)  # SegNet's widths are the prototxt's


@pytest.mark.parametrize(
    "name",
    ["segnet_basic", pytest.param("segnet", marks=pytest.mark.slow)],  # segnet: ~100 s
)
def test_tflite_builtin_ops_and_equal_logits(name, tmp_path, segnet):
    from keras_deeplab.export import to_tflite

    model = segnet if name == "segnet" else create_model(name)
    size = (37, 45)
    calibrate_batch_norms(model, random_images(2, size, seed=3))
    samples = random_images(2, size, seed=7)
    tolerance = 1e-4 * max(1.0, float(np.abs(np.asarray(model(samples))).max()))
    # Noise images: smooth ones give exactly tied pooling windows in Keras that float
    # rounding in TFLite may order differently (an unpooled value then lands one pixel
    # away, as in any indexed unpooling across two runtimes).
    report = to_tflite(
        model,
        tmp_path / f"{name}.tflite",
        input_size=size,
        sample_images=samples,
        labels=[f"c{i}" for i in range(11)],
        tolerance=tolerance,
    )
    assert report["passed"]
    ops = set(report["op_counts"])
    assert {"MAX_POOL_2D", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GREATER_EQUAL"} <= ops
    assert not {op for op in ops if "CUSTOM" in op or "FLEX" in op or "ARGMAX" in op}
    assert ("LOCAL_RESPONSE_NORMALIZATION" in ops) == (name == "segnet_basic")
    assert report["max_abs_diff"] <= tolerance
    print(name, report["op_counts"], report["max_abs_diff"], tolerance)


# ------------------------------------------------------------------ median-frequency weights


def test_median_frequency_weights():
    labels = [np.array([[0, 0, 1], [0, 255, 1]], np.uint8), np.array([[2, 2, 0, 255]])]
    pixels, image_pixels = class_pixel_counts(labels, 4, 255)
    np.testing.assert_array_equal(pixels, [4, 2, 2, 0])
    np.testing.assert_array_equal(image_pixels, [8, 5, 3, 0])
    weights = median_frequency_weights(labels, 4, 255)
    freq = np.array([4 / 8, 2 / 5, 2 / 3])
    np.testing.assert_allclose(weights[:3], np.median(freq) / freq)
    assert weights[3] == 1.0  # absent class: never reaches the loss
    with pytest.raises(ValueError, match="every label was the ignore label"):
        median_frequency_weights([np.full((2, 2), 255)], 3, 255)
    with pytest.raises(ValueError, match="labels hold class 5 but num_classes=3"):
        median_frequency_weights([np.array([5])], 3, 255)
    assert len(SEGNET_CAMVID_WEIGHTS) == 11


def test_config_takes_median_frequency(tmp_path):
    from keras_deeplab.data import load_data
    from keras_deeplab.training.config import ConfigError, check_labels, load_config
    from keras_deeplab.training.run import _median_frequency

    base = {"model": {"name": "segnet_basic"}, "data": {"source": "shapes"}}
    config = load_config(base, ["loss.class_weights=median_frequency"])
    assert config.loss.class_weights == "median_frequency"
    with pytest.raises(ConfigError, match="loss.class_weights"):
        load_config(base, ["loss.class_weights=median"])
    images, masks = make_pairs(tmp_path, count=3, values=(0, 1, 2))
    source = load_data(tmp_path, "train", num_classes=3)
    check_labels(config.loss, source, 3)  # no length check against the string
    weights = _median_frequency(source, 3)
    labels = [np.asarray(m) for _, m in source.dataset.as_numpy_iterator()]
    assert weights == median_frequency_weights(labels, 3, source.ignore_label)
    assert len(weights) == 3 and min(weights) > 0


@pytest.mark.slow  # ~1 min: SavedModel write + reload + verification
def test_saved_model_with_dynamic_sizes(tmp_path):
    from keras_deeplab.export import to_saved_model

    model = create_model("segnet_basic", filters=8)
    calibrate_batch_norms(model, random_images(2, (37, 45), seed=3))
    saved = to_saved_model(model, tmp_path / "saved")
    assert saved["passed"], saved
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    serve = reloaded.signatures["serving_default"]
    ((key, spec),) = serve.structured_input_signature[1].items()
    for size in ((23, 31), (45, 61)):  # one SavedModel, any size (dynamic ceil padding / crops)
        x = np.floor(random_images(1, size, seed=5))  # the signature takes uint8
        y = serve(**{key: tf.cast(tf.constant(x), spec.dtype)})
        logits = np.asarray(model(x))
        assert y["class_map"].shape == (1, *size)
        np.testing.assert_array_equal(np.asarray(y["class_map"])[0], logits[0].argmax(-1))
        np.testing.assert_allclose(
            np.asarray(y["probabilities"]), np.asarray(tf.nn.softmax(logits)), atol=1e-5
        )
