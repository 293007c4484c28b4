"""SavedModel export: serving signatures, dynamic sizes, encoded bytes, verification, atomic writes."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab
from keras_deeplab.data.augment import padded_size
from keras_deeplab.export import saved_model as sm
from keras_deeplab.export.labels import VOC_LABELS, default_labels
from keras_deeplab.export.model_info import model_preprocessing
from keras_deeplab.export.report import VerificationError
from keras_deeplab.export.saved_model import to_saved_model
from keras_deeplab.export.serving import Serving
from keras_deeplab.export.verify_saved_model import verify_saved_model

NUM_CLASSES = 3
MODEL_NAME = "deeplabv3_mobilenetv2_dm05_os8"


def _walk(layer):
    for sub in getattr(layer, "layers", []):
        yield from _walk(sub)
    yield layer


def _randomise(model, seed):
    """He-scaled kernels and non-trivial BN statistics: O(1) logits that vary over the image."""
    rng = np.random.default_rng(seed)
    for layer in _walk(model):
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in weights)
            layer.set_weights(
                [
                    rng.uniform(0.8, 1.2, gamma),
                    rng.normal(0, 0.1, beta),
                    rng.normal(0, 0.1, mean),
                    rng.uniform(0.8, 1.25, var),
                ]
            )
        elif isinstance(layer, keras.layers.DepthwiseConv2D | keras.layers.Conv2D):
            kernel = weights[0]
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            fan_in = kernel.shape[0] * kernel.shape[1] * (1 if depthwise else kernel.shape[2])
            weights[0] = rng.normal(0, np.sqrt(2 / fan_in), kernel.shape)
            layer.set_weights(weights)
    return model


def _model(seed=0, **kwargs):
    return _randomise(
        keras_deeplab.create_model(MODEL_NAME, num_classes=NUM_CLASSES, **kwargs), seed
    )


def _image(h, w, seed):
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin((xx + yy) / 7)], -1)
    noise = np.random.default_rng(seed).normal(0, 20, (h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype("uint8")


def _keras(model, images, pad=True):
    """The model's logits and probabilities on `images`; with `pad`, as evaluated and served:
    padded to k * output_stride + 1 with the mean pixel, cropped back."""
    x = np.asarray(images, "float32")
    h, w = x.shape[1:3]
    if pad:
        size = [padded_size(d, model.output_stride) for d in (h, w)]
        x = np.pad(x, ((0, 0), (0, size[0] - h), (0, size[1] - w), (0, 0)), constant_values=127.5)
    logits = np.asarray(model(x, training=False))[:, :h, :w]
    return logits, np.asarray(tf.nn.softmax(logits, axis=-1))


def _assert_class_maps_equal(class_map, logits):
    top2 = np.sort(logits, axis=-1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4
    assert class_map.shape == logits.shape[:-1]
    np.testing.assert_array_equal(class_map[decided], logits.argmax(-1)[decided])
    assert decided.mean() > 0.99


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    root = tmp_path_factory.mktemp("saved_model")
    report_path = root / "deeplab.report.json"
    report = to_saved_model(model, root / "deeplab", report_path=report_path)
    loaded = tf.saved_model.load(str(root / "deeplab"))
    return model, root / "deeplab", report, report_path, loaded


def test_signatures_have_readable_names_dtypes_and_dynamic_shapes(exported):
    _, path, _, _, loaded = exported
    sigs = loaded.signatures
    assert set(sigs) == {"serving_default", "serving_bytes", "serve"}

    def specs(fn):
        _, inputs = fn.structured_input_signature
        outputs = fn.structured_outputs
        as_tuple = lambda s: (s.dtype, tuple(s.shape.as_list()))  # noqa: E731
        return (
            {k: as_tuple(v) for k, v in inputs.items()},
            {k: as_tuple(v) for k, v in outputs.items()},
        )

    c = NUM_CLASSES
    assert specs(sigs["serving_default"]) == (
        {"images": (tf.uint8, (None, None, None, 3))},
        {
            "class_map": (tf.int32, (None, None, None)),
            "probabilities": (tf.float32, (None, None, None, c)),
        },
    )
    assert specs(sigs["serving_bytes"]) == (
        {"image_bytes": (tf.string, (None,))},
        {
            "class_map": (tf.int32, (None, None, None)),
            "probabilities": (tf.float32, (None, None, None, c)),
            "image_size": (tf.int32, (None, 2)),
        },
    )
    assert specs(sigs["serve"]) == (
        {"images": (tf.float32, (None, None, None, 3))},
        {"logits": (tf.float32, (None, None, None, c))},
    )
    # What `saved_model_cli show --all` prints comes from these SignatureDefs.
    defs = _meta_graph(path).signature_def
    assert defs["serving_default"].inputs["images"].dtype == tf.uint8.as_datatype_enum
    assert defs["serving_bytes"].inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    for name in ("serving_default", "serving_bytes"):
        assert set(defs[name].outputs) >= {"class_map", "probabilities"}


def _meta_graph(path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    return proto.meta_graphs[0]


def test_the_network_is_stored_once_for_all_three_signatures(exported):
    model, path, _, _, _ = exported
    conv_layers = [
        layer
        for layer in _walk(model)
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    ]
    library = _meta_graph(path).graph_def.library.function

    def conv_ops(gradients):
        return [
            node
            for function in library
            if ("internal_grad_fn" in function.signature.name) == gradients
            for node in function.node_def
            if node.op in ("Conv2D", "DepthwiseConv2dNative")
        ]

    assert len(conv_layers) > 30 and len(conv_ops(gradients=False)) == len(conv_layers)
    # Where TF runs dilated depthwise convs natively (oneDNN builds), each one carries its
    # exact gradient (`keras_deeplab.layers._depthwise_exact_gradient`), saved once per layer
    # so that fine-tuning the loaded SavedModel gets the right gradients.
    dilated = [
        layer
        for layer in conv_layers
        if isinstance(layer, keras.layers.DepthwiseConv2D) and max(layer.dilation_rate) > 1
    ]
    native = keras_deeplab.layers.native_dilation("depthwise")
    assert dilated and len(conv_ops(gradients=True)) == (len(dilated) if native else 0)


def test_dynamic_sizes_equal_keras_padded_to_the_k_times_stride_plus_one_grid(exported):
    model, _, _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    for h, w in [(65, 97), (96, 128)]:  # OS 8: the first lines up, the second is padded
        image = _image(h, w, seed=h)[None]
        out = serve(images=tf.constant(image))
        logits, probabilities = _keras(model, image)
        assert out["probabilities"].shape == (1, h, w, NUM_CLASSES)
        assert np.max(np.abs(out["probabilities"].numpy() - probabilities)) <= 1e-5
        _assert_class_maps_equal(out["class_map"].numpy(), logits)
        unpadded = _keras(model, image, pad=False)[1]
        moved = np.max(np.abs(out["probabilities"].numpy() - unpadded))
        assert moved <= 1e-5 if (h, w) == (65, 97) else moved > 1e-2, moved


def test_batch_of_two_equals_keras_per_image(exported):
    model, _, _, _, loaded = exported
    batch = np.stack([_image(57, 75, 1), _image(57, 75, 2)])
    out = loaded.signatures["serving_default"](images=tf.constant(batch))
    assert out["class_map"].shape == (2, 57, 75)
    for i in range(2):
        logits, probabilities = _keras(model, batch[i : i + 1])
        assert np.max(np.abs(out["probabilities"].numpy()[i] - probabilities[0])) <= 1e-5
        _assert_class_maps_equal(out["class_map"].numpy()[i], logits[0])


def test_bytes_signature_png_and_jpeg_of_different_sizes(exported):
    model, _, _, _, loaded = exported
    png_image, jpeg_image = _image(49, 81, 3), _image(72, 60, 4)
    png = tf.io.encode_png(png_image).numpy()
    jpeg = tf.io.encode_jpeg(jpeg_image, quality=90).numpy()
    decoded_jpeg = tf.io.decode_image(jpeg, channels=3).numpy()
    assert np.abs(decoded_jpeg.astype(int) - jpeg_image).max() > 0  # JPEG is lossy
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant([png, jpeg]))
    np.testing.assert_array_equal(out["image_size"].numpy(), [[49, 81], [72, 60]])
    assert out["class_map"].shape == (2, 72, 81)
    assert out["probabilities"].shape == (2, 72, 81, NUM_CLASSES)
    class_map, probabilities = out["class_map"].numpy(), out["probabilities"].numpy()
    for i, image in enumerate([png_image, decoded_jpeg]):
        h, w = image.shape[:2]
        logits, reference = _keras(model, image[None])
        assert np.max(np.abs(probabilities[i, :h, :w] - reference[0])) <= 1e-5
        _assert_class_maps_equal(class_map[i, :h, :w], logits[0])
    # Padding beyond each image: class -1, probability 0.
    assert (class_map[0, 49:] == -1).all() and (class_map[1, :, 60:] == -1).all()
    assert (probabilities[0, 49:] == 0).all()


def test_batch_norm_runs_in_inference_mode(exported):
    model, _, _, _, loaded = exported
    image = _image(65, 65, 5)[None]
    served = loaded.signatures["serve"](images=tf.constant(image, tf.float32))["logits"].numpy()
    inference = np.asarray(model(image.astype("float32"), training=False))
    training = np.asarray(model(image.astype("float32"), training=True))
    assert np.max(np.abs(served - inference)) <= 1e-4
    assert np.max(np.abs(served - training)) > 0.1  # batch statistics would differ


def test_report_labels_and_written_json(exported):
    _, path, report, report_path, _ = exported
    for key in [
        "format",
        "path",
        "size_bytes",
        "signatures",
        "num_images",
        "image_sizes",
        "tolerance",
        "max_abs_diff",
        "class_map_agreement",
        "class_map_mismatches",
        "latency_ms",
        "worst_output",
        "passed",
        "labels_path",
    ]:
        assert key in report
    assert report["passed"] is True and report["path"] == str(path.absolute())
    assert report["image_sizes"] == [[65, 97], [65, 97], [96, 128]]
    assert set(report["max_abs_diff"]) == {
        "serving_default/probabilities",
        "serving_bytes/probabilities",
        "serve/logits",
    }
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert report["class_map_agreement"] == {"serving_default": 1.0, "serving_bytes": 1.0}
    assert set(report["latency_ms"]) == {"keras", "serving_default", "serving_bytes", "serve"}
    assert all(v > 0 for v in report["latency_ms"].values())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert report["size_bytes"] == size > 1_000_000
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(report))
    assert (path / "labels.txt").read_text().split() == ["class_0", "class_1", "class_2"]
    assert default_labels(21) == list(VOC_LABELS) and default_labels(21)[15] == "person"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_a_non_empty_directory(exported, tmp_path):
    model, path, *_ = exported
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        to_saved_model(model, path)
    assert sorted(p.name for p in path.iterdir()) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        to_saved_model(model, tmp_path / "file")


@pytest.mark.slow  # suite time: 26 s; test_hardening_faults kills a SavedModel write in the default run
def test_overwrite_replaces_and_interrupted_export_leaves_old_content(tmp_path, monkeypatch):
    model = _model()
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")

    class Interrupted:
        def write_out(self, path):
            (Path(path) / "saved_model.pb").write_bytes(b"partial")
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sm, "_archive", lambda *args: Interrupted())
        with pytest.raises(KeyboardInterrupt):
            to_saved_model(model, target, overwrite=True)
        with pytest.raises(KeyboardInterrupt):
            to_saved_model(model, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]

    report = to_saved_model(model, target, overwrite=True, verify=False, labels=["a", "b", "c"])
    assert report["verified"] is False and set(report["signatures"]) >= {"serving_bytes"}
    assert (target / "labels.txt").read_text() == "a\nb\nc\n"
    assert not (target / "old.txt").exists() and (target / "saved_model.pb").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_verification_fails_when_a_variable_changed(exported):
    model, path, *_ = exported
    tampered = _model()
    np.testing.assert_array_equal(tampered.get_weights()[0], model.get_weights()[0])
    bn = tampered.get_layer("mobilenetv2_dm05_backbone").get_layer("Conv_BatchNorm")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean + 0.5, var])
    with pytest.raises(VerificationError, match="worst output serv") as info:
        verify_saved_model(tampered, path)
    assert info.value.report["passed"] is False
    assert max(info.value.report["max_abs_diff"].values()) > 1e-4


@pytest.mark.slow  # suite time: 16 s; the TFLite twin stays in the default suite
def test_failed_verification_publishes_nothing_and_writes_the_report(tmp_path, monkeypatch):
    model, other = _model(0), _model(1)
    real_archive = sm._archive
    monkeypatch.setattr(sm, "_archive", lambda m, *rest: real_archive(other, *rest))
    report_path = tmp_path / "report.json"
    with pytest.raises(VerificationError, match="does not match the Keras model"):
        to_saved_model(model, tmp_path / "out", report_path=report_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    written = json.loads(report_path.read_text())
    assert written["passed"] is False and written["published"] is False


@pytest.mark.slow  # suite time: 16 s
def test_model_without_preprocessing_needs_the_argument(tmp_path):
    bare = _model(include_preprocessing=False)
    assert model_preprocessing(bare) is None
    with pytest.raises(ValueError, match="its backbone's is preprocessing='symmetric'"):
        to_saved_model(bare, tmp_path / "bare")
    with pytest.raises(ValueError, match="applied twice"):
        to_saved_model(_model(), tmp_path / "x", preprocessing="caffe")
    assert not list(tmp_path.iterdir())

    report = to_saved_model(bare, tmp_path / "bare", preprocessing="symmetric")
    assert report["passed"]
    twin = _model()  # same seed: same weights, normalisation inside
    image = _image(61, 83, 6)[None]
    out = tf.saved_model.load(str(tmp_path / "bare")).signatures["serving_default"](
        images=tf.constant(image)
    )
    logits, probabilities = _keras(twin, image)
    assert np.max(np.abs(out["probabilities"].numpy() - probabilities)) <= 1e-5
    _assert_class_maps_equal(out["class_map"].numpy(), logits)


def test_softmax_model_is_not_softmaxed_twice_and_msc_is_supported():
    model = _model(activation="softmax")
    image = tf.constant(_image(41, 53, 7)[None])
    out = Serving(model, None).images(image)  # the traced graph: float32 rounding vs eager
    expected = _keras(model, image)[0]  # the probabilities themselves (softmax model)
    assert np.max(np.abs(out["probabilities"].numpy() - expected)) <= 1e-5
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    assert expected.max() > 0.9  # a second softmax over 3 classes would cap it at 0.58

    msc = keras_deeplab.MultiScaleInputs(_model(), scales=(1.0, 0.5))
    assert model_preprocessing(msc) == "symmetric"
    out = Serving(msc, None).images(image)
    probabilities = _keras(msc, image)[1]
    assert np.max(np.abs(out["probabilities"].numpy() - probabilities)) <= 1e-5


@pytest.mark.slow  # suite time: 14 s
def test_plain_keras_model_says_what_it_returns_with_outputs(tmp_path):
    model = _model(activation="softmax")
    plain = keras.Model(model.input, model.output)  # a plain Functional: no model facts
    plain.set_weights(model.get_weights())
    assert not isinstance(plain, keras_deeplab.SegmentationModel)
    image = tf.constant(_image(41, 53, 8)[None])
    expected = np.asarray(model(tf.cast(image, tf.float32), training=False))
    # traced graph against eager: float32 rounding (3.6e-6 on a Zen 5 EPYC), as above
    told = Serving(plain, None, outputs="softmax").images(image)["probabilities"].numpy()
    assert np.max(np.abs(told - expected)) <= 1e-5
    assumed = Serving(plain, None).images(image)["probabilities"].numpy()  # logits assumed
    assert np.max(np.abs(assumed - tf.nn.softmax(expected))) <= 1e-5

    with pytest.raises(ValueError, match="returns softmax .* drop outputs='logits'"):
        to_saved_model(model, tmp_path / "x", outputs="logits")
    with pytest.raises(ValueError, match="outputs must be one of"):
        to_saved_model(plain, tmp_path / "x", outputs="probabilities")
    assert not list(tmp_path.iterdir())
    report = to_saved_model(plain, tmp_path / "plain", outputs="softmax")
    assert report["passed"] and "serve/probabilities" in report["max_abs_diff"]
