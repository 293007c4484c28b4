"""TFLite export (`keras_deeplab.export.to_tflite` / `verify_tflite`) on tiny models.

Every quantization mode, integer I/O, argmax inside, labels, representative data from an
image folder, the verification report, a failing verification, bad input, and Google's
`deeplabv3_257_mv_gpu.tflite` converted to Keras and exported again (logits equal the
file's on the 8 VOC sample images).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import calibrate_batch_norms
from PIL import Image

import keras_deeplab
from keras_deeplab import create_model
from keras_deeplab.export import to_tflite, verify_tflite
from keras_deeplab.export.graph import ExportGraph
from keras_deeplab.export.labels import labels_path_for, resolve_labels
from keras_deeplab.export.report import VerificationError, atomic_write_bytes, write_report
from keras_deeplab.export.rewrite import optimize_for_export
from keras_deeplab.export.tflite import warn_unaligned
from keras_deeplab.layers import Preprocessing
from keras_deeplab.tflite_file import detect_quantization, op_counts, op_options
from keras_deeplab.weights import load_tflite
from tests.official_tflite import official_tflite_dir, shared_data_dir

SIZE = 33
NUM_CLASSES = 3
REPORT_KEYS = {
    "format",
    "path",
    "labels_path",
    "quantize",
    "input_size",
    "size_bytes",
    "op_counts",
    "num_ops",
    "input",
    "output",
    "num_images",
    "max_abs_diff",
    "max_abs_diff_delegate",
    "argmax_agreement",
    "agreement_floor",
    "tolerance",
    "latency_ms",
    "num_threads",
    "passed",
    "worst_output",
    "optimizations",
    "delegate_partitions",
}


def _tiny_model():
    """MobileNetV2-dm0.5 OS8 DeepLab v3 with BatchNorm statistics of real activations, so
    its logits (and their argmax) are not degenerate. Seeded: the int8 agreement of a random
    3-class model depends on its draw (0.45-0.97 over unseeded builds)."""
    keras.utils.set_random_seed(0)
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=NUM_CLASSES)
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    return calibrate_batch_norms(model, x)


def _copy(model):
    other = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=NUM_CLASSES)
    other.set_weights(model.get_weights())
    return other


def _images(count, size=SIZE, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _run(path, x):
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def float32_export(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("float32")
    path = folder / "tiny.tflite"
    report = to_tflite(model, path, input_size=SIZE, report_path=folder / "tiny.report.json")
    return path, report


def test_float32_export_matches_keras(model, float32_export):
    path, report = float32_export
    assert report["passed"] and report["quantize"] == "none"
    assert report["max_abs_diff"] <= 1e-4
    x = _images(1, seed=5)
    assert np.max(np.abs(_run(path, x) - np.asarray(model(x)))) <= 1e-4
    assert report["input"]["key"] == "image" and report["input"]["shape"] == [1, SIZE, SIZE, 3]
    assert report["delegate_partitions"] == 1  # the whole graph runs in XNNPACK
    assert report["output"] == {
        "key": "logits",
        "name": report["output"]["name"],
        "shape": [1, SIZE, SIZE, NUM_CLASSES],
        "dtype": "float32",
        "quantization": None,
    }
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_float32_graph_is_lean_with_native_dilations(float32_export):
    path, report = float32_export
    counts = op_counts(path)
    assert "SPACE_TO_BATCH_ND" not in counts and "BATCH_TO_SPACE_ND" not in counts
    assert report["op_counts"] == counts
    # BN folded, activations fused; ASPP image pooling folded (no broadcast resize / concat).
    assert set(counts) == {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "ADD",
        "MEAN",  # ASPP image pooling
        "RESIZE_BILINEAR",
        "MUL",  # preprocessing inside: x * 2 / 255 - 1
        "SUB",
    }
    assert counts["RESIZE_BILINEAR"] == 1  # only the logits upsampling
    options = op_options(path)
    dilations = {op["dilation"] for op in options if op["op"] == "DEPTHWISE_CONV_2D"}
    assert dilations == {(1, 1), (2, 2), (4, 4)}  # OS8: rates 2 and 4 stay native
    assert report["optimizations"] == ["image_pooling_fold"]


def test_report_file_and_labels(float32_export):
    path, report = float32_export
    assert REPORT_KEYS <= set(report)
    written = json.loads((path.parent / "tiny.report.json").read_text())
    assert written["passed"] is True and written["size_bytes"] == path.stat().st_size > 0
    assert written["latency_ms"] > 0 and written["num_images"] == 4
    assert labels_path_for(path) == path.parent / "tiny.labels.txt"
    assert Path(report["labels_path"]).read_text().splitlines() == ["class_0", "class_1", "class_2"]


def test_optimized_network_equals_the_model():
    # The rewrite keeps the image-pooling rows wherever the branch sits in the concat.
    model = keras_deeplab.DeepLabV3Plus(
        backbone="mobilenetv2_dm05", output_stride=8, atrous_rates=(12, 24, 36), num_classes=4
    )
    network, applied = optimize_for_export(model, (41, 49))
    assert applied == ["image_pooling_fold"]
    x = np.random.default_rng(2).uniform(0, 255, (1, 41, 49, 3)).astype("float32")
    scale = float(np.max(np.abs(model(x))))
    assert np.max(np.abs(np.asarray(network(x)) - np.asarray(model(x)))) <= 1e-5 * max(scale, 1)
    no_pooling = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", image_pooling=False)
    assert optimize_for_export(no_pooling, (33, 33))[1] == []


@pytest.mark.parametrize(
    "quantize, floor",
    [pytest.param("float16", 0.9, marks=pytest.mark.slow), ("dynamic", None)],  # suite time: 27 s
)
def test_float16_and_dynamic(model, float32_export, tmp_path, quantize, floor):
    path = tmp_path / f"{quantize}.tflite"
    report = to_tflite(model, path, input_size=SIZE, quantize=quantize)
    assert report["passed"] and report["quantize"] == quantize
    assert report["agreement_floor"] == floor
    assert (floor or 0.5) <= report["argmax_agreement"] <= 1.0
    assert report["max_abs_diff"] is None and report["max_abs_diff_delegate"] < 0.5
    assert report["size_bytes"] < 0.75 * float32_export[1]["size_bytes"]
    interpreter = Interpreter(model_path=str(path))
    assert detect_quantization(interpreter) == quantize
    assert report["input"]["dtype"] == report["output"]["dtype"] == "float32"


def test_int8_float_io_from_image_folder(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images(6, 40, seed=3).astype(np.uint8)):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    path = tmp_path / "int8.tflite"
    report = to_tflite(model, path, input_size=SIZE, quantize="int8", representative_data=folder)
    assert report["representative_images"] == 6 and report["num_images"] == 4
    assert report["quantize"] == "int8" and report["agreement_floor"] is None
    assert 0.0 < report["argmax_agreement"] <= 1.0
    assert report["input"]["dtype"] == report["output"]["dtype"] == "float32"
    counts = op_counts(path)
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1
    assert report["delegate_partitions"] == 1
    assert detect_quantization(Interpreter(model_path=str(path))) == "int8"


@pytest.mark.slow  # suite time: 22 s; argmax_inside[int8-uint8] keeps integer I/O in the default suite
def test_int8_integer_io(model, tmp_path):
    # An iterable of float images of another size (resized to the export size).
    images = list(_images(5, 45, seed=4))
    path = tmp_path / "int8_io.tflite"
    report = to_tflite(
        model, path, input_size=SIZE, quantize="int8", representative_data=images, int8_io=True
    )
    assert report["input"]["dtype"] == report["output"]["dtype"] == "int8"
    scale, zero = report["input"]["quantization"]
    assert 0.5 < scale < 1.5 and zero == -128  # RGB [0, 255] -> int8
    assert "QUANTIZE" not in op_counts(path) and "DEQUANTIZE" not in op_counts(path)
    assert report["argmax_agreement"] > 0.5


@pytest.mark.parametrize(
    "quantize, int8_io, floor",
    [("none", False, 0.999), ("int8", "uint8", None)],
)
def test_argmax_inside(model, tmp_path, quantize, int8_io, floor):
    path = tmp_path / "argmax.tflite"
    labels = ["sky", "road", "car"]
    report = to_tflite(
        model,
        path,
        input_size=SIZE,
        quantize=quantize,
        representative_data=_images(4, seed=6) if quantize == "int8" else None,
        int8_io=int8_io,
        argmax=True,
        labels=labels,
    )
    assert report["argmax"] and report["output"]["key"] == "class_map"
    assert report["output"]["shape"] == [1, SIZE, SIZE] and report["output"]["dtype"] == "uint8"
    assert report["agreement_floor"] == floor and report["max_abs_diff"] is None
    assert {"ARG_MAX", "CAST"} <= set(op_counts(path))
    assert labels_path_for(path).read_text().splitlines() == labels
    if quantize == "none":
        x = _images(1, seed=7)
        class_map = _run(path, x)
        assert class_map.dtype == np.uint8
        assert np.mean(class_map == np.asarray(model(x)).argmax(-1)) >= 0.999
    else:
        assert report["input"]["dtype"] == "uint8" and report["argmax_agreement"] > 0.5


def test_failed_verification_names_output_and_first_diverging_layer(model, float32_export):
    path, _ = float32_export
    tampered = _copy(model)
    kernel = tampered.get_layer("aspp0").kernel
    kernel.assign(kernel * 1.5)
    with pytest.raises(VerificationError) as error:
        verify_tflite(tampered, path)
    message = str(error.value)
    assert "'logits'" in message and "> tolerance" in message
    assert "First diverging layer: 'aspp0_relu'" in message
    report = error.value.report
    assert report["passed"] is False and report["max_abs_diff"] > 1e-3
    assert report["diagnosis"]["first_diverging"]["layer"] == "aspp0_relu"
    # Everything before aspp0 still agrees.
    before = [e for e in report["diagnosis"]["layers"] if "backbone" in e["layer"]]
    assert before and max(e["relative_error"] for e in before) < 1e-3
    # The untouched model verifies.
    assert verify_tflite(model, path)["passed"]


def test_to_tflite_failure_writes_report_and_raises(model, tmp_path):
    path, report_path = tmp_path / "strict.tflite", tmp_path / "strict.json"
    with pytest.raises(VerificationError, match="worst output 'logits'"):
        to_tflite(model, path, input_size=SIZE, tolerance=1e-12, report_path=report_path)
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["tolerance"] == 1e-12
    assert report["path"] == str(path) and path.is_file()


def test_preprocessing_conventions(model):
    x = _images(1)
    stripped = ExportGraph(model, include_preprocessing=False)
    assert stripped.input_key == "normalized_image" and not any(
        isinstance(layer, Preprocessing) for layer in stripped.core.layers
    )
    normalised = stripped.to_input(x)
    np.testing.assert_allclose(normalised, x / 127.5 - 1.0, atol=1e-6)
    assert np.max(np.abs(stripped.reference(normalised) - np.asarray(model(x)))) <= 1e-6
    raw = create_model(
        "deeplabv3_mobilenetv2_dm05_os8", num_classes=NUM_CLASSES, include_preprocessing=False
    )
    raw.set_weights(model.get_weights())
    added = ExportGraph(raw, include_preprocessing=True)
    assert added.input_key == "image" and added.prepend is not None
    assert np.max(np.abs(added.reference(x) - np.asarray(model(x)))) <= 1e-6


def test_model_facts_from_segmentation_models_and_assumed_for_others(model):
    softmax = create_model(
        "deeplabv3_mobilenetv2_dm05_os8",
        num_classes=NUM_CLASSES,
        activation="softmax",
        include_preprocessing=False,
    )
    graph = ExportGraph(softmax)  # the model's properties: activation, backbone normalisation
    assert (graph.output_key, graph.input_key, graph.mode) == (
        "probabilities",
        "normalized_image",
        "symmetric",
    )
    assert ExportGraph(softmax, include_preprocessing=True).prepend.mode == "symmetric"

    plain = keras.Model(model.input, model.output)  # a plain Functional: no model facts
    assert not isinstance(plain, keras_deeplab.SegmentationModel)
    graph = ExportGraph(plain)  # logits assumed; normalisation from its Preprocessing layer
    assert (graph.output_key, graph.input_key, graph.mode) == ("logits", "image", "symmetric")
    assert graph.num_classes == NUM_CLASSES

    inputs = keras.Input((None, None, 3))
    bare = keras.Model(inputs, keras.layers.Conv2D(NUM_CLASSES, 1)(inputs), name="bare")
    assert ExportGraph(bare).input_key == "normalized_image"  # fed as given
    with pytest.raises(ValueError, match="'bare' does not normalise its input"):
        ExportGraph(bare, include_preprocessing=True)


def test_warns_when_an_align_corners_model_is_exported_off_the_k_times_stride_plus_one_grid(model):
    import warnings

    with pytest.warns(UserWarning, match=r"input_size 32x40 .* Export at 33x41"):
        warn_unaligned(model, (32, 40))  # OS 8: 33 and 41 line up, 32 and 40 do not
    unet = create_model("unet", num_classes=NUM_CLASSES)  # no align-corners resizes: own rules
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unaligned(model, (SIZE, 41))
        warn_unaligned(unet, (32, 32))


def test_labels():
    voc = resolve_labels(None, 21)
    assert voc[0] == "background" and voc[15] == "person" and len(voc) == 21
    assert resolve_labels(None, 2) == ["class_0", "class_1"]
    with pytest.raises(ValueError, match="3 non-empty class names"):
        resolve_labels(["a", "b"], 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantize": "int4"}, "quantize must be one of"),
        ({"quantize": "int8"}, "needs representative_data"),
        ({"int8_io": True}, "int8_io needs quantize='int8'"),
        ({"input_size": (33,)}, "input_size must be"),
        ({"input_size": 0}, "input_size must be"),
        ({"quantize": "int8", "representative_data": "missing"}, "does not exist"),
        ({"labels": ["a"]}, "non-empty class names"),
        ({"include_preprocessing": "yes"}, "include_preprocessing must be"),
    ],
)
def test_bad_arguments(model, tmp_path, kwargs, message):
    if kwargs.get("representative_data") == "missing":
        kwargs = {**kwargs, "representative_data": tmp_path / "missing"}
    with pytest.raises(ValueError, match=message):
        to_tflite(model, tmp_path / "bad.tflite", **kwargs)
    assert not (tmp_path / "bad.tflite").exists()


def test_empty_representative_folder(model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"empty contains no \.jpg"):
        to_tflite(
            model, tmp_path / "x.tflite", quantize="int8", representative_data=tmp_path / "empty"
        )
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        to_tflite(model, tmp_path / "x.tfl")
    with pytest.raises(ValueError, match="no such TFLite file"):
        verify_tflite(model, tmp_path / "x.tflite")


def test_atomic_writes(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_report(target, {"passed": True, "value": np.float32(0.5), "shape": (1, 2)})
    assert json.loads(target.read_text()) == {"passed": True, "value": 0.5, "shape": [1, 2]}

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"half")
    assert json.loads(target.read_text())["passed"] is True  # old content untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_official_file_exported_again_equals_it(tmp_path):
    """load_tflite(Google's file) -> to_tflite at 257 float32: same logits on the 8 VOC images."""
    official = official_tflite_dir() / "deeplabv3_257_mv_gpu.tflite"
    voc = shared_data_dir() / "voc2012_samples" / "JPEGImages"
    model = load_tflite(official, include_preprocessing=False)
    path = tmp_path / "ours.tflite"
    report = to_tflite(model, path, input_size=257, sample_images=voc, labels=None)
    assert report["passed"] and report["num_images"] == 8 and report["max_abs_diff"] <= 1e-4
    assert report["input"]["key"] == "normalized_image"
    assert labels_path_for(path).read_text().splitlines()[20] == "tvmonitor"

    ours, theirs = Interpreter(model_path=str(path)), Interpreter(model_path=str(official))
    worst = 0.0
    for image_path in sorted(voc.glob("*.jpg")):
        rgb = Image.open(image_path).convert("RGB").resize((257, 257), Image.BILINEAR)
        x = ((np.asarray(rgb, np.float32) - 127.5) / 127.5)[None]
        for interpreter in (ours, theirs):
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
            interpreter.invoke()
        a = ours.get_tensor(ours.get_output_details()[0]["index"])
        b = theirs.get_tensor(theirs.get_output_details()[0]["index"])
        worst = max(worst, float(np.max(np.abs(a - b))))
    assert worst <= 1e-4
    # As lean as Google's graph: fewer ops, the same kinds (its AVERAGE_POOL_2D is our MEAN).
    counts, official_counts = op_counts(path), op_counts(official)
    assert set(counts) <= set(official_counts) - {"AVERAGE_POOL_2D"} | {"MEAN"}
    assert sum(counts.values()) < sum(official_counts.values())
    assert counts["CONV_2D"] == official_counts["CONV_2D"] + 1  # image-pooling fold
    assert counts["RESIZE_BILINEAR"] == 1 and "CONCATENATION" not in counts
