"""Bad-input catalogue (issue 8): one table entry per kind of bad input.

Every bad file is found by the up-front scan that `load_data` runs on folder sources (the
entry point of configs, `keras-deeplab train` and `eval`) before any model is built. The
error is one `DataError` naming the file and the fix; `skip_bad=True` (`--skip-bad`) instead
counts and lists the bad pairs and leaves them out, and an epoch then runs. Inputs that have
a documented conversion rule (grayscale, RGBA, palette, full-range 16-bit images) are
accepted and decoded as documented in `keras_deeplab.data.decode` and `.validation`.

Entries covered in depth elsewhere are still listed here (with a smaller check):
weights for another model / class count (tests/test_weights_loading.py), TFLite files
(tests/test_weights_tflite.py), configs (tests/test_training_config.py).
"""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_rgb, tiny_model
from PIL import Image

from keras_deeplab.cli import main
from keras_deeplab.data import DataError, load_data, paired_folders, train_pipeline
from keras_deeplab.data.validation import MAX_IMAGE_PIXELS

SIZE = (24, 32)  # H, W of the good examples
NUM_CLASSES = 3


# ----------------------------------------------------------------------------- helpers


def _mask(seed=0, size=SIZE, values=(0, 1, 2, 255)):
    return np.random.default_rng(seed).choice(np.array(values, np.uint8), size)


def _png_bytes(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG") if mode else Image.fromarray(array).save(
        buf, "PNG"
    )
    return buf.getvalue()


def _jpeg_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG whose header claims `width` x `height` (no real pixel data)."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def make_dataset(root, count=3):
    """`root/images/good<k>.png` + `root/masks/good<k>.png` (3 classes, 255 = ignore)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(count):
        Image.fromarray(random_rgb(SIZE, k)).save(root / "images" / f"good{k}.png")
        Image.fromarray(_mask(k), "L").save(root / "masks" / f"good{k}.png")
    return root


def _add(root, image_name, image_bytes, mask=None):
    """Adds one pair: raw image bytes and (default) a good mask of the standard size."""
    path = root / "images" / image_name
    path.write_bytes(image_bytes)
    stem = image_name.rsplit(".", 1)[0]
    mask_path = root / "masks" / f"{stem}.png"
    if mask is None:
        Image.fromarray(_mask(9), "L").save(mask_path)
    else:
        mask_path.write_bytes(mask)
    return path, mask_path


def _load(root, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no split folders")
        return load_data(str(root), None, num_classes=NUM_CLASSES, **kwargs)


# ------------------------------------------------------------------- bad files (errors)
# name -> builder(root) returning (bad file path, [fix hints the message must contain])


def _truncated_jpeg(root):
    data = _jpeg_bytes(random_rgb(SIZE, 5))
    path, _ = _add(root, "cut.jpg", data[: len(data) // 2])
    return path, ["truncated JPEG", "fix:"]


def _corrupt_jpeg(root):
    data = bytearray(_jpeg_bytes(random_rgb(SIZE, 5)))
    data[2:200] = bytes(range(198))  # headers (quantisation / Huffman tables) destroyed
    path, _ = _add(root, "broken.jpg", bytes(data))
    return path, ["cannot", "image"]


def _truncated_png(root):
    data = _png_bytes(random_rgb(SIZE, 5))
    path, _ = _add(root, "cut.png", data[: len(data) // 2])
    return path, ["truncated PNG", "fix:"]


def _corrupt_png(root):
    data = bytearray(_png_bytes(random_rgb(SIZE, 5)))
    start = data.index(b"IDAT") + 40
    data[start : start + 64] = bytes(64)  # pixel data damaged, header and IEND intact
    path, _ = _add(root, "damaged.png", bytes(data))
    return path, ["cannot decode", "fix:"]


def _low_range_16bit(root):
    twelve_bit = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 1000).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(twelve_bit).save(buf, "PNG")
    path, _ = _add(root, "sensor16.png", buf.getvalue())
    return path, ["16-bit image whose maximum value is 767", "rescale it to 8 bits"]


def _mask_size_mismatch(root):
    _, mask = _add(
        root, "odd.png", _png_bytes(random_rgb(SIZE, 5)), _png_bytes(_mask(5, (24, 30)), "L")
    )
    return mask, ["mask size 30x24 (WxH) differs from its image", "fix:"]


def _mask_values_out_of_range(root):
    values = _mask(5, values=(0, 1, 7))
    _, mask = _add(root, "seven.png", _png_bytes(random_rgb(SIZE, 5)), _png_bytes(values, "L"))
    return mask, ["mask values [7] are outside [0, 3)", "label_map"]


def _colour_coded_mask(root):
    colours = np.zeros(SIZE + (3,), np.uint8)
    colours[:, 16:] = (128, 0, 0)  # VOC's aeroplane colour
    _, mask = _add(root, "colour.png", _png_bytes(random_rgb(SIZE, 5)), _png_bytes(colours))
    return mask, ["colour-coded RGB mask", "colors_to_labels"]


def _empty_image_file(root):
    path, _ = _add(root, "empty.jpg", b"")
    return path, ["empty image file (0 bytes)", "fix:"]


def _zero_sized_image(root):
    path, _ = _add(root, "zero.png", _png_header_only(0, 24))
    return path, ["zero-sized image (0x24", "fix:"]


def _huge_image(root):
    side = int(MAX_IMAGE_PIXELS**0.5) + 100  # just over the limit, below PIL's bomb limit
    path, _ = _add(root, "huge.png", _png_header_only(side, side))
    return path, [f"image is {side}x{side}", "MP limit", "downscale or tile"]


def _decompression_bomb(root):
    path, _ = _add(root, "bomb.png", _png_header_only(100_000, 100_000))
    return path, ["too large", "downscale or tile"]


BAD_FILES = {
    "truncated_jpeg": _truncated_jpeg,
    "corrupt_jpeg": _corrupt_jpeg,
    "truncated_png": _truncated_png,
    "corrupt_png": _corrupt_png,
    "16bit_low_range_image": _low_range_16bit,
    "mask_size_mismatch": _mask_size_mismatch,
    "mask_values_outside_classes": _mask_values_out_of_range,
    "rgb_colour_coded_mask": _colour_coded_mask,
    "empty_image_file": _empty_image_file,
    "zero_sized_image": _zero_sized_image,
    "extremely_large_image": _huge_image,
    "decompression_bomb": _decompression_bomb,
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_clear_error_or_skipped(case, tmp_path):
    root = make_dataset(tmp_path / "data")
    bad, hints = BAD_FILES[case](root)
    with pytest.raises(DataError) as info:
        _load(root)
    message = str(info.value)
    assert "1 of 4 examples are bad" in message
    assert f"{bad}:" in message, message  # names the file ...
    for hint in hints:  # ... and what to do
        assert hint in message, (hint, message)
    assert "skip_bad=True" in message
    assert "Traceback" not in message and "{{function_node" not in message

    with pytest.warns(UserWarning, match=r"1 of 4 examples are bad:\n  - .*") as caught:
        data = _load(root, skip_bad=True)
    assert str(bad) in str(caught[0].message)
    assert data.num_examples == 3 and len(data.skipped) == 1 and str(bad) in data.skipped[0][1]
    # the rest trains: one epoch through the official augmentation pipeline
    batches = list(train_pipeline(data, 3, crop_size=17, seed=0))
    assert len(batches) == 1 and batches[0][0].shape == (3, 17, 17, 3)


def test_without_the_scan_a_bad_file_crashes_the_epoch(tmp_path):
    """Why the scan runs first: the same truncated PNG fails inside tf.data mid-epoch."""
    root = make_dataset(tmp_path / "data")
    _truncated_png(root)
    data = _load(root, validate=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(train_pipeline(data, 2, crop_size=17, seed=0))


# ----------------------------------------------- accepted inputs (documented conversions)
# name -> (image bytes, expected decoded RGB)

_GRAY = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8)
_RGBA = np.concatenate(
    [random_rgb(SIZE, 2), np.zeros(SIZE + (1,), np.uint8)], axis=-1
)  # fully transparent
_DEEP = (np.random.default_rng(3).integers(0, 65536, SIZE)).astype(np.uint16)


def _palette_png():
    img = Image.fromarray(random_rgb(SIZE, 4)).quantize(16)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), np.asarray(img.convert("RGB"))


def _gray_jpeg():
    buf = io.BytesIO()
    Image.fromarray(_GRAY, "L").save(buf, "JPEG", quality=95)
    # TensorFlow's decode (the pipeline's) with channels=3 replicates the gray channel
    decoded = tf.io.decode_jpeg(buf.getvalue(), channels=1).numpy()
    return buf.getvalue(), np.repeat(decoded, 3, -1)


def _sixteen_bit():
    buf = io.BytesIO()
    Image.fromarray(_DEEP).save(buf, "PNG")
    return buf.getvalue(), np.repeat((_DEEP >> 8).astype(np.uint8)[..., None], 3, -1)


def _scan_data_damaged_jpeg():
    """Damaged entropy-coded data: decoders recover (a smeared image), nothing crashes."""
    data = bytearray(_jpeg_bytes(random_rgb(SIZE, 6)))
    start = data.index(b"\xff\xda") + 40  # inside the scan, after the SOS header
    data[start : start + 30] = bytes(30)
    return bytes(data), None


ACCEPTED = {
    "grayscale_png": lambda: (_png_bytes(_GRAY, "L"), np.repeat(_GRAY[..., None], 3, -1)),
    "grayscale_jpeg": _gray_jpeg,
    "rgba_png_alpha_dropped": lambda: (_png_bytes(_RGBA, "RGBA"), _RGBA[..., :3]),
    "palette_png_expanded": _palette_png,
    "16bit_full_range_png": _sixteen_bit,
    "jpeg_with_damaged_scan_data": _scan_data_damaged_jpeg,
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_documented_conversions_are_accepted(case, tmp_path):
    root = make_dataset(tmp_path / "data", count=1)
    data_bytes, expected = ACCEPTED[case]()
    suffix = "jpg" if data_bytes[:2] == b"\xff\xd8" else "png"
    path, _ = _add(root, f"odd.{suffix}", data_bytes)
    data = _load(root)  # scanned: every file decoded, nothing reported
    images = {p: image.numpy() for (p, _), (image, _) in zip(data.files, data.dataset, strict=True)}
    image = images[str(path)]
    assert image.shape == SIZE + (3,) and image.dtype == np.uint8
    if expected is not None:
        np.testing.assert_array_equal(image, expected)


# ------------------------------------------------------------ dataset structure errors


def _voc(root, split_text=None):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(random_rgb(SIZE, 0)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(_mask(0), "L").save(root / "SegmentationClass" / "a.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("a\n")
    if split_text is not None:
        (sets / "train.txt").write_text(split_text)
    return sets / "train.txt"


def test_empty_split_file(tmp_path):
    split = _voc(tmp_path / "voc", split_text="\n\n")
    with pytest.raises(DataError, match="is empty; list one image id per line") as info:
        load_data(str(tmp_path / "voc"), "train")
    assert str(split) in str(info.value)


def test_missing_split_file(tmp_path):
    split = _voc(tmp_path / "voc")
    with pytest.raises(DataError) as info:
        load_data(str(tmp_path / "voc"), "train")
    message = str(info.value)
    assert str(split) in message and "not found; available splits: val" in message


def test_split_ids_without_files(tmp_path):
    split = _voc(tmp_path / "voc", split_text="a\nb\n")
    with pytest.raises(DataError, match="1 without an image.*: b.*Fix: restore") as info:
        load_data(str(tmp_path / "voc"), "train")
    assert str(split) in str(info.value)


def test_images_without_masks(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "masks" / "good1.png").unlink()
    with pytest.raises(DataError) as info:
        paired_folders(root / "images", root / "masks", NUM_CLASSES)
    message = str(info.value)
    assert "1 of 3 images" in message and str(root / "images" / "good1.png") in message
    assert "Fix: add the masks, move those images out" in message


def test_cli_reports_a_bad_dataset_in_one_line(tmp_path, capsys):
    """`keras-deeplab eval` scans first: exit 2, the file and the fix, no traceback."""
    root = make_dataset(tmp_path / "data")
    bad, _ = _truncated_png(root)
    weights = tmp_path / "w.weights.h5"
    tiny_model(3).save_weights(weights)
    argv = ["eval", "--data", str(root), "--split", "x", "--num-classes", "3"]
    argv += ["--weights", str(weights), "--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(argv) == 2
    err = capsys.readouterr().err  # after the scan's progress bar
    assert "keras-deeplab: error: data:all: 1 of 4 examples are bad" in err and str(bad) in err
    assert "truncated PNG" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ weights, TFLite, configs


def test_weights_for_another_model_or_class_count(tmp_path):
    """Details: tests/test_weights_loading.py (shapes listed, logits fallback)."""
    import keras_deeplab
    from keras_deeplab.weights.loading import load_weights

    source = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=21)
    path = tmp_path / "voc.weights.h5"
    source.save_weights(path)
    other_head = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2_dm05", num_classes=21)
    with pytest.raises(ValueError, match=r"voc.weights.h5' does not match") as info:
        load_weights(other_head, str(path))
    assert "decoder" in str(info.value)
    fewer_classes = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=5)
    with pytest.warns(UserWarning, match=r"logits_semantic.*21 classes"):
        load_weights(fewer_classes, str(path))


def test_tflite_file_that_is_not_deeplab(tmp_path):
    """A real (tiny, non-DeepLab) TFLite model is refused with one clear error."""
    import keras

    from keras_deeplab.weights.tflite import load_tflite

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    path = tmp_path / "classifier.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(ValueError) as info:
        load_tflite(str(path))
    message = str(info.value)
    assert str(path) in message and "not a DeepLab" in message


def test_config_with_unknown_keys_and_wrong_types(tmp_path):
    """Details: tests/test_training_config.py."""
    from keras_deeplab.training import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  crop_sise: 65\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "2 problems" in message
    assert "data.crop_sise: unknown key (did you mean 'crop_size'?)" in message
    assert "train.steps: expected int, got str 'many'" in message


def test_train_cli_skip_bad_reaches_the_data_scan(monkeypatch, capsys, tmp_path):
    """`keras-deeplab train --skip-bad` becomes the `data.options.skip_bad` the scan reads."""
    from types import SimpleNamespace

    seen = {}

    def train(config, overrides):
        seen["overrides"] = overrides
        return SimpleNamespace(
            step=0,
            elapsed=0.0,
            checkpoint=None,
            metrics=None,
            log_dir=None,
            resumed_from=None,
            precision_choice=None,
        )

    monkeypatch.setattr("keras_deeplab.training.train_from_config", train)
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  steps: 1\n")
    assert main(["train", "--config", str(config_file), "train.steps=5", "--skip-bad"]) == 0
    assert seen["overrides"] == ["train.steps=5", "data.options.skip_bad=true"]
    from keras_deeplab.training import load_config

    config = load_config(None, seen["overrides"])
    assert config.data.options == {"skip_bad": True}
