"""Official DeepLab TFLite file -> Keras: weights, golden tensors, VOC mIoU, errors.

Data: `../shared/data/deeplabv3_tflite/` (Google's `deeplabv3_257_mv_gpu.tflite`, MobileNetV2
dm 0.5, OS 8, VOC, plus derived references) and `../shared/data/voc2012_samples/` (8 VOC val
image + mask pairs). Inputs are made as its PROVENANCE.md says: PIL bilinear resize to
257x257, the file's input is `(rgb - 127.5) / 127.5`.
"""

import csv
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import random_images, shared_data_dir
from official_tflite import keras_layer_name, official_tflite_dir, to_keras_kernel
from PIL import Image

from keras_deeplab import create_model
from keras_deeplab.weights.tflite import convert_tflite, inspect_tflite, load_tflite

FILE = "deeplabv3_257_mv_gpu.tflite"
NAME = "deeplabv3_mobilenetv2_dm05_os8"
BACKBONE = "mobilenetv2_dm05_backbone"
SIZE = 257
NUM_CLASSES = 21
SCOPE = "MobilenetV2/"
# Overall figures of the official file on the 8 pairs (deeplabv3_tflite/PROVENANCE.md "Check").
OFFICIAL_PIXEL_ACCURACY = 0.9451
OFFICIAL_MIOU = 0.7559
# Our model vs the file's float32 graph (different kernels / summation order).
COMPUTE_ATOL = 1e-4
# Golden float16 tensors: rounding to float16 (11-bit significand) moves a normal value by at
# most half an ulp, 2**-11 relative; float32 goldens get the same bound (stricter than needed).
FLOAT16_RTOL = 2.0**-11


@pytest.fixture(scope="module")
def tflite_path():
    return official_tflite_dir() / FILE


@pytest.fixture(scope="module")
def model(tflite_path):
    return load_tflite(tflite_path)


@pytest.fixture(scope="module")
def interpreter(tflite_path):
    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter, normalised):
    """Logits of the file for a batch of [-1, 1] images (one invoke per image)."""
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    logits = []
    for image in normalised:
        interpreter.set_tensor(inp, image[None].astype(np.float32))
        interpreter.invoke()
        logits.append(interpreter.get_tensor(out)[0])
    return np.stack(logits)


def normalise(rgb):
    return (np.asarray(rgb, np.float32) - 127.5) / 127.5


def resize_257(image):
    return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))


@pytest.fixture(scope="module")
def voc():
    """`[(name, 257x257 uint8 RGB, mask)]` of the 8 VOC pairs, in pairs.csv order."""
    root = shared_data_dir("voc2012_samples")
    with open(root / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    samples = []
    for row in rows:
        image = resize_257(Image.open(root / row["image_file"]))
        mask = np.asarray(Image.open(root / row["mask_file"]))
        samples.append((row["name"], image, mask))
    assert len(samples) == 8
    return samples


@pytest.fixture(scope="module")
def voc_logits(voc, model, interpreter):
    """(file logits, our logits), both [8, 257, 257, 21], for the same inputs."""
    rgb = np.stack([image for _, image, _ in voc]).astype(np.float32)
    ours = np.asarray(model(rgb, training=False))
    return run_tflite(interpreter, normalise(rgb)), ours


def test_inspect_infers_the_official_architecture(tflite_path):
    info = inspect_tflite(tflite_path)
    assert info["model_name"] == NAME
    assert info["builder"] == "DeepLabV3"
    assert info["config"] == {
        "backbone": "mobilenetv2_dm05",
        "num_classes": 21,
        "output_stride": 8,
        "atrous_rates": (),
        "image_pooling": True,
    }
    assert (info["depth_multiplier"], info["output_stride"], info["num_classes"]) == (0.5, 8, 21)
    assert not info["decoder"]
    assert info["input_shape"] == (257, 257, 3) and info["output_shape"] == (257, 257, 21)
    assert (info["input_name"], info["output_name"]) == ("sub_7", "ResizeBilinear_3")
    assert info["op_counts"] == {
        "ADD": 10,
        "AVERAGE_POOL_2D": 1,
        "CONCATENATION": 1,
        "CONV_2D": 38,
        "DEPTHWISE_CONV_2D": 17,
        "RESIZE_BILINEAR": 3,
    }
    # 110 float weight tensors + 3 int32 resize sizes (PROVENANCE: 688,357 float parameters).
    assert info["num_constants"] == 113
    assert info["num_parameters"] == 688_357


def test_every_file_constant_is_in_the_model(tflite_path, model):
    """Against the independent dump `weights_tflite_layout.npz`: kernels, biases, BN identity."""
    dump = np.load(tflite_path.parent / "weights_tflite_layout.npz")
    backbone = model.get_layer(BACKBONE)
    kernels = [n for n in dump.files if n.endswith("weights")]
    assert len(kernels) == 55
    for name in kernels:
        scope = SCOPE if name.startswith(SCOPE) else ""
        container = backbone if scope else model
        layer = container.get_layer(keras_layer_name(name, scope))
        np.testing.assert_array_equal(np.asarray(layer.kernel), to_keras_kernel(dump[name]))
        (bias_name,) = [
            n for n in dump.files if n.rsplit("/", 1)[0] == name.rsplit("/", 1)[0] and "bias" in n
        ]
        bias = dump[bias_name]
        if layer.use_bias:
            np.testing.assert_array_equal(np.asarray(layer.bias), bias)
            continue
        bn = container.get_layer(f"{layer.name}_BatchNorm")
        np.testing.assert_array_equal(np.asarray(bn.beta), bias)
        np.testing.assert_array_equal(np.asarray(bn.gamma), 1.0)
        np.testing.assert_array_equal(np.asarray(bn.moving_mean), 0.0)
        var_plus_eps = np.asarray(bn.moving_variance) + np.float32(bn.epsilon)
        np.testing.assert_array_equal(var_plus_eps, np.float32(1.0))
    # And the BN layers really compute x + beta (up to the rounding of rsqrt(1.0), which is
    # exact on some CPUs and off by ~1e-7 relative on others).
    bn = backbone.get_layer("expanded_conv_16_project_BatchNorm")
    x = np.random.default_rng(0).normal(0, 10, (2, 3, 3, 160)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(bn(x, training=False)), x + np.asarray(bn.beta), rtol=0, atol=1e-5
    )


def test_preprocessing_reproduces_the_reference_inputs(voc):
    images = {name: image for name, image, _ in voc}
    reference = official_tflite_dir() / "reference"
    for name in ("2007_000033", "2007_000129"):
        png = np.asarray(Image.open(reference / f"{name}_input257.png"))
        np.testing.assert_array_equal(images[name], png)


def test_logits_match_the_file_on_voc(voc_logits):
    official, ours = voc_logits
    assert ours.shape == official.shape == (8, SIZE, SIZE, NUM_CLASSES)
    max_abs = float(np.abs(ours - official).max())
    agreement = float((ours.argmax(-1) == official.argmax(-1)).mean())
    print(f"8 VOC images at 257x257: max abs logit diff {max_abs:.3g}, argmax agree {agreement}")
    assert max_abs <= 1e-3
    assert agreement >= 0.9999


def test_without_preprocessing_takes_the_files_own_input(tflite_path, interpreter, voc):
    raw = load_tflite(tflite_path, include_preprocessing=False)
    assert "preprocessing" not in [layer.name for layer in raw.layers]
    x = normalise(np.stack([voc[0][1], voc[4][1]]))
    official = run_tflite(interpreter, x)
    ours = np.asarray(raw(x, training=False))
    assert float(np.abs(ours - official).max()) <= 1e-3
    assert (ours.argmax(-1) == official.argmax(-1)).mean() >= 0.9999


def test_loaded_model_runs_at_any_size(model):
    assert model.input_shape == (None, None, None, 3)
    for shape in ((1, 129, 97, 3), (1, 64, 80, 3)):
        assert model(np.zeros(shape, np.float32)).shape == (*shape[:3], NUM_CLASSES)


def _golden_submodels(model):
    backbone = model.get_layer(BACKBONE)
    stem = keras.Model(backbone.input, backbone.get_layer("Conv_Relu6").output)
    head = keras.Model(
        model.input,
        [
            model.get_layer("aspp0").input,  # backbone output
            model.get_layer("concat_projection_relu").output,
            model.get_layer("logits_semantic").output,
            model.output,
        ],
    )
    return stem, head


@pytest.mark.parametrize("image", ["2007_000033", "2007_000129"])
def test_golden_tensors(model, image):
    golden = np.load(official_tflite_dir() / "reference" / "golden_tensors.npz")
    rgb = np.asarray(Image.open(official_tflite_dir() / "reference" / f"{image}_input257.png"))
    rgb = rgb.astype(np.float32)[None]
    stem, head = _golden_submodels(model)
    features, projection, logits, output = (np.asarray(t) for t in head(rgb))
    ours = {
        "MobilenetV2/Conv/Relu6": np.asarray(stem(normalise(rgb))),
        "MobilenetV2/expanded_conv_16/project/BatchNorm/FusedBatchNorm": features,
        "concat_projection/Relu": projection,
        "logits/semantic/BiasAdd": logits,
        "output_logits_center_row": output[0, SIZE // 2],
    }
    checked = 0
    for key, value in ours.items():
        if f"{image}/{key}" not in golden:
            continue  # Conv/Relu6 is stored for 2007_000033 only
        ref = golden[f"{image}/{key}"].astype(np.float32)
        assert value.shape == ref.shape, key
        excess = np.abs(value - ref) - (FLOAT16_RTOL * np.abs(ref) + COMPUTE_ATOL)
        print(f"{image} {key}: max abs diff {np.abs(value - ref).max():.3g}")
        assert excess.max() <= 0, key
        checked += 1
    assert checked == (5 if image == "2007_000033" else 4)
    argmax = output[0].argmax(-1)
    assert (argmax == golden[f"{image}/output_argmax"]).mean() >= 0.9999


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
def test_every_backbone_tensor_matches_the_interpreter(tflite_path, model, voc):
    """All 61 MobilenetV2 intermediates of the file (float32, all tensors kept) vs ours."""
    interpreter = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    x = normalise(voc[0][1])[None]
    run_tflite(interpreter, x)
    backbone = model.get_layer(BACKBONE)
    names = {}
    for detail in interpreter.get_tensor_details():
        name = detail["name"]
        if name.startswith(SCOPE) and not re.search(r"weights|bias", name):
            layer = name[len(SCOPE) :].replace("/BatchNorm/FusedBatchNorm", "/BatchNorm")
            names[layer.replace("/", "_")] = detail["index"]
    assert len(names) == 61  # Conv + 16 expand + 17 depthwise + 17 project + 10 add
    outputs = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names])(x)
    # float32 round-off of different kernels (this interpreter runs the builtin kernels):
    # a few pixels reach ~6e-4 (values up to 67), the mean stays ~1e-6 of each tensor's range;
    # the final logits differ by < 1e-4 (test_logits_match_the_file_on_voc).
    worst_max = worst_mean = 0.0
    for index, ours in zip(names.values(), outputs, strict=True):
        reference = interpreter.get_tensor(index)
        diff = np.abs(np.asarray(ours) - reference)
        worst_max = max(worst_max, float(diff.max()))
        worst_mean = max(worst_mean, float(diff.mean() / np.abs(reference).max()))
    print(
        f"backbone intermediates: max abs diff {worst_max:.3g}, worst mean/range {worst_mean:.3g}"
    )
    assert worst_max <= 1e-3
    assert worst_mean <= 1e-5


def _confusion(labels, predictions):
    valid = labels != 255
    index = labels[valid].astype(np.int64) * NUM_CLASSES + predictions[valid]
    return np.bincount(index, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def _scores(confusion):
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    miou = float(np.mean(np.diag(confusion)[present] / union[present]))
    return float(np.trace(confusion) / confusion.sum()), miou


def _voc_scores(voc, logits):
    """Logits resized back to the image size (TF bilinear), argmax, one confusion matrix."""
    confusion = 0
    for (_, _, mask), image_logits in zip(voc, logits, strict=True):
        resized = tf.image.resize(image_logits[None], mask.shape, method="bilinear")
        confusion = confusion + _confusion(mask, np.asarray(resized[0]).argmax(-1))
    return _scores(confusion)


def test_voc_miou_equals_the_official_file(voc, voc_logits):
    official, ours = voc_logits
    ours_acc, ours_miou = _voc_scores(voc, ours)
    file_acc, file_miou = _voc_scores(voc, official)
    print(
        f"mIoU ours {ours_miou:.6f} file {file_miou:.6f}; pixel acc {ours_acc:.6f} {file_acc:.6f}"
    )
    assert abs(ours_miou - file_miou) <= 1e-5 and abs(ours_acc - file_acc) <= 1e-5
    assert round(ours_miou, 4) == OFFICIAL_MIOU
    assert round(ours_acc, 4) == OFFICIAL_PIXEL_ACCURACY


def test_per_image_results_match_the_reference_files(voc, voc_logits):
    """`voc_eval_results.txt` / `predictions/*.png` were made from the 257x257 argmax resized
    to the image with PIL nearest; that reproduces them."""
    _, ours = voc_logits
    reference = official_tflite_dir() / "reference"
    lines = (reference / "voc_eval_results.txt").read_text().splitlines()
    figures = {
        line.split()[0]: tuple(float(v) for v in re.findall(r"(?:pixacc|img_mIoU)=([\d.]+)", line))
        for line in lines
    }
    for (name, _, mask), logits in zip(voc, ours, strict=True):
        small = Image.fromarray(logits.argmax(-1).astype(np.uint8))
        pred = np.asarray(small.resize(mask.shape[::-1], Image.NEAREST))
        official = np.asarray(Image.open(reference / "predictions" / f"{name}_pred.png"))
        assert (pred == official).mean() >= 0.9999, name
        acc, miou = _scores(_confusion(mask, pred))
        assert (round(acc, 3), round(miou, 3)) == figures[name], name


def test_convert_writes_weights_for_the_registered_model(tflite_path, model, tmp_path):
    out = tmp_path / "dm05_os8_voc.weights.h5"
    name, config = convert_tflite(tflite_path, out)
    assert name == NAME
    assert config["num_classes"] == NUM_CLASSES and config["output_stride"] == 8
    fresh = create_model(name)
    fresh.load_weights(out)
    x = random_images(1, (65, 81))
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))


@pytest.fixture
def official_bytes(tflite_path):
    return tflite_path.read_bytes()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_text_file_is_refused(tmp_path):
    path = _write(tmp_path, "labels.tflite", b"background\naeroplane\n")
    with pytest.raises(ValueError, match="is not a TFLite flatbuffer") as err:
        inspect_tflite(path)
    assert str(path) in str(err.value)


def test_truncated_file_is_refused(tmp_path, official_bytes):
    path = _write(tmp_path, "truncated.tflite", official_bytes[: len(official_bytes) // 3])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_tflite(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_tflite(tmp_path / "missing.tflite")


def test_non_deeplab_graph_is_refused(tmp_path, official_bytes):
    data = official_bytes.replace(b"logits/semantic/weights", b"logits/semantix/weights")
    path = _write(tmp_path, "renamed.tflite", data)
    with pytest.raises(ValueError, match="not a DeepLab segmentation model") as err:
        inspect_tflite(path)
    assert str(path) in str(err.value)


def test_unknown_tensor_is_refused(tmp_path, official_bytes):
    assert official_bytes.count(b"aspp0/weights") == 1
    path = _write(
        tmp_path, "aspp9.tflite", official_bytes.replace(b"aspp0/weights", b"aspp9/weights")
    )
    with pytest.raises(ValueError, match="'aspp9/weights'.*no such Conv2D layer") as err:
        load_tflite(path, verify=False)
    assert str(path) in str(err.value)


def test_shape_mismatch_is_refused(tmp_path, official_bytes):
    a = b"MobilenetV2/expanded_conv_4/expand/weights"  # [96, 1, 1, 16]
    b = b"MobilenetV2/expanded_conv_7/expand/weights"  # [192, 1, 1, 32]
    data = official_bytes.replace(a, b"@" * len(a)).replace(b, a).replace(b"@" * len(a), b)
    path = _write(tmp_path, "swapped.tflite", data)
    with pytest.raises(ValueError, match="shape mismatch") as err:
        load_tflite(path, verify=False)
    assert "expanded_conv_" in str(err.value) and str(path) in str(err.value)
