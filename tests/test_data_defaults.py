"""Layout defaults survive explicit options; class names; option checks; the skip-bad hint."""

import numpy as np
import pytest
from conftest import save_image, shared_data_dir
from PIL import Image

from keras_deeplab.data import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    DataError,
    ade20k,
    camvid,
    cityscapes,
    from_directory,
    load_data,
    validate,
    voc,
)
from keras_deeplab.data.folders import reader_options

# ---------------------------------------------------------------------- CamVid (real data)


def test_camvid_full_explicit_num_classes_keeps_void_to_ignore():
    root = shared_data_dir("camvid_full")
    default = load_data(root, "val")
    data = load_data(root, "val", num_classes=11)  # scanned: every mask must pass
    assert data.num_examples == default.num_examples == 101
    assert data.num_classes == 11 and data.class_names == CAMVID_CLASSES
    assert data.label_lut[11] == 255 and data.ignore_label == 255
    np.testing.assert_array_equal(data.label_lut, default.label_lut)
    raw = np.asarray(Image.open(data.files[0][1]))
    _, mask = next(iter(data.dataset))
    assert (raw == 11).any()
    np.testing.assert_array_equal(mask.numpy(), np.where(raw == 11, 255, raw))


def test_camvid_num_classes_against_the_layout_is_one_error():
    for root in (shared_data_dir("camvid_full"), shared_data_dir("camvid_segnet")):
        with pytest.raises(DataError) as error:
            load_data(root, "val", num_classes=21)
        message = str(error.value)
        assert "num_classes=21" in message and "defines 11 classes" in message
        assert "--num-classes 11" in message and "\n" not in message
    with pytest.raises(DataError, match="num_classes=21 but CamVid defines 11"):
        camvid(shared_data_dir("camvid_segnet"), "val", num_classes=21)


def test_camvid_overrides_replace_only_themselves():
    root = shared_data_dir("camvid_segnet")
    names = tuple(f"c{i}" for i in range(11))
    data = from_directory(root, "train", class_names=names)
    assert data.class_names == names and data.label_lut[11] == 255
    # The void label follows an explicit ignore label.
    data = from_directory(root, "train", ignore_label=254)
    assert data.ignore_label == 254 and data.label_lut[11] == 254
    assert data.class_names == CAMVID_CLASSES
    validate(data, progress=False)
    # An explicit label map replaces the void mapping: raw 11 is then out of range.
    data = from_directory(root, "train", num_classes=11, label_map=None)
    assert data.label_lut[11] == 11
    with pytest.raises(DataError, match=r"mask values \[11\] are outside \[0, 11\)"):
        validate(data, progress=False)
    # Twelve classes of one's own (void as a class) are possible.
    twelve = from_directory(root, "train", class_names=(*CAMVID_CLASSES, "void"), label_map={})
    assert twelve.num_classes == 12 and twelve.label_lut[11] == 11


# ---------------------------------------------------------------------- other layouts


def test_class_file_folder_keeps_names_with_matching_count(tmp_path):
    rng = np.random.default_rng(0)
    save_image(tmp_path / "images" / "train" / "a.png", rng.integers(0, 255, (6, 6, 3)))
    save_image(tmp_path / "masks" / "train" / "a.png", np.ones((6, 6)))
    (tmp_path / "classes.txt").write_text("bg\nthing\nother\n")
    assert from_directory(tmp_path, "train").class_names == ("bg", "thing", "other")
    assert from_directory(tmp_path, "train", num_classes=3).class_names == ("bg", "thing", "other")
    with pytest.raises(DataError, match=r"num_classes=4 but .*classes.txt defines 3 classes"):
        from_directory(tmp_path, "train", num_classes=4)
    data = from_directory(tmp_path, "train", num_classes=4, class_names=list("abcd"))
    assert data.class_names == tuple("abcd")


def test_voc_names_and_counts():
    root = shared_data_dir("voc2012_samples")
    with pytest.warns(UserWarning, match="no ImageSets"):
        assert voc(root, "val").class_names == VOC_CLASSES
    names = tuple(f"n{i}" for i in range(21))
    with pytest.warns(UserWarning, match="no ImageSets"):
        data = from_directory(root, "val", class_names=names)
    assert data.num_classes == 21 and data.class_names == names


def test_cityscapes_and_ade20k_check_num_classes(tmp_path):
    rng = np.random.default_rng(1)
    stem = "aachen_000000_000019"
    save_image(
        tmp_path / "cs/leftImg8bit/val/aachen" / f"{stem}_leftImg8bit.png",
        rng.integers(0, 255, (8, 8, 3)),
    )
    save_image(
        tmp_path / "cs/gtFine/val/aachen" / f"{stem}_gtFine_labelIds.png", np.full((8, 8), 7)
    )
    data = from_directory(tmp_path / "cs", "val", num_classes=19)
    assert data.class_names == CITYSCAPES_CLASSES
    with pytest.raises(DataError, match="num_classes=21 but the dataset has 19 classes"):
        from_directory(tmp_path / "cs", "val", num_classes=21)
    relabelled = cityscapes(tmp_path / "cs", "val", num_classes=2, label_map={7: 1})
    assert relabelled.num_classes == 2 and relabelled.class_names == ("class_0", "class_1")
    ade = tmp_path / "ADEChallengeData2016"
    save_image(ade / "images/validation/ADE_val_00000001.jpg", rng.integers(0, 255, (8, 8, 3)))
    save_image(ade / "annotations/validation/ADE_val_00000001.png", np.ones((8, 8)))
    assert ade20k(ade, "val", num_classes=150).num_classes == 150
    with pytest.raises(DataError, match="num_classes=151 but the dataset has 150"):
        from_directory(tmp_path, "val", num_classes=151)


# ---------------------------------------------------------------------- options and hints


def test_options_of_another_reader_are_one_clear_error():
    root = shared_data_dir("camvid_segnet")
    with pytest.raises(DataError) as error:
        load_data(root, "val", image_size=96, num_examples=8)
    message = str(error.value)
    assert "does not take the option(s) image_size, num_examples" in message
    assert "label_map" in message and "camvid_segnet" in message
    with pytest.raises(DataError, match=r"PASCAL VOC layout\) does not take .*mask_threshold"):
        from_directory(shared_data_dir("voc2012_samples"), "val", mask_threshold=127)
    with pytest.raises(DataError, match="shapes source does not take the option.* label_map"):
        load_data("shapes", "val", label_map={1: 2})
    assert {"image_size", "num_examples", "skip_bad"} <= set(reader_options("shapes"))
    assert {"aug", "label_map", "mask_threshold", "annotations"} <= set(reader_options("directory"))
    assert "image_size" not in reader_options("directory")


def test_bad_file_hint_names_cli_config_and_python(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        save_image(tmp_path / "images" / f"{name}.png", rng.integers(0, 255, (6, 6, 3)))
        save_image(tmp_path / "masks" / f"{name}.png", np.full((6, 6), 1 if name == "a" else 9))
    with pytest.raises(DataError) as error:
        load_data(tmp_path, None, num_classes=2)
    message = str(error.value)
    assert "b.png" in message
    assert message.endswith(
        "--skip-bad (CLI), data.options.skip_bad=true (config), skip_bad=True (Python)."
    )
    with pytest.warns(UserWarning, match="skipped"):
        assert load_data(tmp_path, None, num_classes=2, skip_bad=True).num_examples == 1
