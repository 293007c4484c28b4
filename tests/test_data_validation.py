"""Bad inputs: every case gives one clear `DataError` naming the file (or a documented rule)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_pairs, save_mask
from PIL import Image

from keras_deeplab.data import (
    DataError,
    file_source,
    label_lut,
    paired_folders,
    shapes,
    train_pipeline,
    validate,
)


def test_size_mismatch_names_file(tmp_path):
    images, masks = make_pairs(tmp_path)
    save_mask(masks / "im1.png", np.zeros((10, 11)))
    data = paired_folders(images, masks, 3)
    with pytest.raises(DataError) as info:
        validate(data, progress=False)
    message = str(info.value)
    assert "1 of 3 examples are bad" in message
    assert "im1.png: mask size 11x10 (WxH) differs from its image" in message
    assert "skip_bad=True" in message
    # The same check runs inside tf.data with the same message (no silent misalignment).
    with pytest.raises(tf.errors.OpError, match="im1.png: mask size 11x10"):
        list(data.dataset)


def test_out_of_range_values_listed_and_skipped(tmp_path):
    images, masks = make_pairs(tmp_path, count=4)
    save_mask(masks / "im0.png", np.full((10, 12), 9))
    save_mask(masks / "im2.png", np.full((10, 12), 3))
    data = paired_folders(images, masks, 3)
    with pytest.raises(DataError, match=r"(?s)2 of 4.*im0.png: mask values \[9\].*im2.png.*\[3\]"):
        validate(data, progress=False)
    with pytest.warns(UserWarning, match="2 of 4 examples are bad"):
        kept = validate(data, skip_bad=True, progress=False)
    assert kept.num_examples == 2 and len(list(kept.dataset)) == 2
    assert [s[0].split("/")[-1] for s in kept.skipped] == ["im0.png", "im2.png"]
    assert all("im0" not in m and "im2" not in m for _, m in kept.files)
    # skipped files are never decoded by the pipeline
    batches = list(train_pipeline(kept, 2, crop_size=8, seed=0))
    assert len(batches) == 1


def test_label_map_and_threshold_tables():
    table = label_lut({11: 255, 3: 0})
    assert table[11] == 255 and table[3] == 0 and table[4] == 4
    binary = label_lut(mask_threshold=127)
    assert binary[0] == 0 and binary[127] == 0 and binary[128] == 1 and binary[255] == 1
    with pytest.raises(DataError, match="label_map entries"):
        label_lut({300: 1})


def test_grayscale_rgba_and_16bit_images(tmp_path):
    """Grayscale -> replicated RGB; alpha dropped; 16-bit PNG scaled to 8 bits (v >> 8)."""
    gray = np.arange(120, dtype=np.uint8).reshape(10, 12)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
    (tmp_path / "images").mkdir()
    Image.fromarray(gray, "L").save(tmp_path / "images/a_gray.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "images/b_rgba.png")
    Image.fromarray(deep).save(tmp_path / "images/c_deep.png")
    Image.fromarray(gray, "L").save(tmp_path / "images/d_tiff.tif")
    for name in ("a_gray", "b_rgba", "c_deep", "d_tiff"):
        save_mask(tmp_path / "masks" / f"{name}.png", np.zeros((10, 12)))
    data = paired_folders(tmp_path / "images", tmp_path / "masks", 2)
    assert Image.open(data.files[2][0]).mode.startswith("I")  # really a 16-bit PNG
    validate(data, decode_images=True, progress=False)
    decoded = [image.numpy() for image, _ in data.dataset]
    np.testing.assert_array_equal(decoded[0], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(decoded[1][..., 0], 200)
    assert decoded[1].shape == (10, 12, 3) and decoded[1][..., 1:].max() == 0
    np.testing.assert_array_equal(decoded[2][..., 0], (deep >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decoded[3], np.repeat(gray[..., None], 3, -1))


def test_bad_mask_formats(tmp_path):
    images, masks = make_pairs(tmp_path, count=3)
    Image.fromarray(np.full((10, 12), 300, np.uint16)).save(masks / "im0.png")
    colour = np.zeros((10, 12, 3), np.uint8)
    colour[:5] = (128, 0, 0)
    Image.fromarray(colour, "RGB").save(masks / "im1.png")
    gray_rgb = np.repeat(np.ones((10, 12, 1), np.uint8), 3, -1)
    Image.fromarray(gray_rgb, "RGB").save(masks / "im2.png")  # equal channels: accepted
    data = paired_folders(images, masks, 3)
    with pytest.raises(DataError) as info:
        validate(data, progress=False)
    message = str(info.value)
    assert "2 of 3" in message
    assert "im0.png: 16-bit mask with values up to 300" in message
    assert "im1.png: colour-coded RGB mask" in message and "colors_to_labels" in message


def test_structural_errors(tmp_path):
    images, masks = make_pairs(tmp_path, count=3)
    (masks / "im2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images in .*images have no mask.*im2.png"):
        paired_folders(images, masks, 3)
    with pytest.raises(DataError, match="pass num_classes="):
        paired_folders(images, masks)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        paired_folders(empty, masks, 3)
    with pytest.raises(DataError, match="folder .*nothere not found"):
        paired_folders(tmp_path / "nothere", masks, 3)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(DataError, match="lossy .*m.jpg"):
        file_source([(images / "im0.png", tmp_path / "m.jpg")], 3)
    with pytest.raises(DataError, match=r"file\(s\) not found: .*gone.png"):
        file_source([(images / "im0.png", tmp_path / "gone.png")], 3)
    (tmp_path / "x.ppm").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    with pytest.raises(DataError, match="unsupported image format for .*x.ppm"):
        file_source([(tmp_path / "x.ppm", masks / "im0.png")], 3)


def test_unreadable_image_is_reported(tmp_path):
    images, masks = make_pairs(tmp_path, count=2)
    (images / "im1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="im1.png: cannot read image"):
        validate(paired_folders(images, masks, 3), progress=False)


def test_contract_checks():
    with pytest.raises(DataError, match="ignore_label 2 is also a class label"):
        shapes_with(ignore_label=2)
    with pytest.raises(DataError, match="3 class_names for num_classes=5"):
        shapes_with(class_names=("a", "b", "c"))
    with pytest.raises(DataError, match="no image/mask pairs"):
        file_source([], 3)
    data = shapes("val", num_examples=4, image_size=32)
    assert validate(data, progress=False) is data


def shapes_with(**overrides):
    import dataclasses

    return dataclasses.replace(shapes("val", num_examples=2, image_size=32), **overrides)
