"""Dataset readers: VOC, Cityscapes, ADE20K, paired folders, `from_directory`, real shared data."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, save_mask, shared_data_dir
from PIL import Image

from keras_deeplab.data import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    VOC_CLASSES,
    DataError,
    ade20k,
    camvid,
    cityscapes,
    colorize,
    colors_to_labels,
    from_directory,
    load_data,
    paired_folders,
    validate,
    voc,
    voc_palette,
)


def random_labels(rng, shape, values):
    return rng.choice(np.asarray(values, np.uint8), size=shape)


def first(data):
    image, mask = next(iter(data.dataset))
    return image.numpy(), mask.numpy()


def all_examples(data):
    return [(i.numpy(), m.numpy()) for i, m in data.dataset]


@pytest.fixture
def voc_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    masks = {}
    for name, (h, w) in {"2007_000001": (20, 30), "2007_000002": (25, 17)}.items():
        save_image(root / "JPEGImages" / f"{name}.jpg", rng.integers(0, 255, (h, w, 3)))
        masks[name] = random_labels(rng, (h, w), [0, 5, 20, 255])
        save_mask(root / "SegmentationClass" / f"{name}.png", masks[name], mode="P")
        save_mask(root / "SegmentationClassAug" / f"{name}.png", np.minimum(masks[name], 20))
    save_image(root / "JPEGImages" / "2007_000003.jpg", rng.integers(0, 255, (8, 8, 3)))  # no mask
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000002\n")
    (sets / "trainaug.txt").write_text("2007_000001\n2007_000002\n")
    return tmp_path / "VOCdevkit", masks


def test_voc_palette_masks_give_indices(voc_dir):
    root, masks = voc_dir
    data = voc(root, "train")
    assert data.num_classes == 21 and data.class_names == VOC_CLASSES
    assert data.num_examples == 2 and data.name == "voc:train"
    examples = all_examples(data)
    for (image, mask), name in zip(examples, ["2007_000001", "2007_000002"], strict=True):
        assert image.dtype == np.uint8 and image.shape == masks[name].shape + (3,)
        np.testing.assert_array_equal(mask, masks[name])
    assert voc(root, "val").num_examples == 1


def test_voc_aug_split_reads_segmentation_class_aug(voc_dir):
    root, masks = voc_dir
    data = voc(root, "train_aug")
    assert "aug" in data.name and all("SegmentationClassAug" in m for _, m in data.files)
    np.testing.assert_array_equal(first(data)[1], np.minimum(masks["2007_000001"], 20))


def test_voc_errors(voc_dir, tmp_path):
    root, _ = voc_dir
    with pytest.raises(
        DataError, match=r"test.txt not found; available splits: train, trainaug, val"
    ):
        voc(root, "test")
    sets = root / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty.txt is empty"):
        voc(root, "empty")
    (sets / "bad.txt").write_text("2007_000003\n2007_000009\n")
    with pytest.raises(DataError, match=r"2007_000009.*without a mask.*2007_000003"):
        voc(root, "bad")
    with pytest.raises(DataError, match="not a PASCAL VOC folder"):
        voc(tmp_path / "nowhere")


def test_from_directory_detects_voc(voc_dir):
    root, _ = voc_dir
    data = from_directory(root, "val")
    assert data.name == "voc:val" and data.num_examples == 1


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    rng = np.random.default_rng(1)
    stem = "aachen_000000_000019"
    raw = random_labels(rng, (16, 32), [0, 7, 26, 33, 4])
    save_image(
        tmp_path / "leftImg8bit/train/aachen" / f"{stem}_leftImg8bit.png",
        rng.integers(0, 255, (16, 32, 3)),
    )
    save_mask(tmp_path / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png", raw)
    for data in (cityscapes(tmp_path, "train"), from_directory(tmp_path, "train")):
        assert data.num_classes == 19 and data.class_names[13] == "car"
        expected = np.select([raw == 7, raw == 26, raw == 33], [0, 13, 18], 255)
        np.testing.assert_array_equal(first(data)[1], expected)
    with pytest.raises(DataError, match="splits there: train"):
        cityscapes(tmp_path, "val")


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "ADEChallengeData2016"
    raw = random_labels(rng, (12, 10), [0, 1, 2, 150])
    save_image(root / "images/validation/ADE_val_00000001.jpg", rng.integers(0, 255, (12, 10, 3)))
    save_mask(root / "annotations/validation/ADE_val_00000001.png", raw)
    (root / "images/training").mkdir(parents=True)
    (root / "annotations/training").mkdir(parents=True)
    for data in (ade20k(root, "val"), from_directory(tmp_path, "val")):
        assert data.num_classes == 150 and data.class_names == ADE20K_CLASSES
        np.testing.assert_array_equal(first(data)[1], np.where(raw == 0, 255, raw.astype(int) - 1))
    assert len(ADE20K_CLASSES) == 150


def test_paired_folders_suffix_detection_and_label_map(tmp_path):
    rng = np.random.default_rng(3)
    raw = {}
    for name in ("b", "a"):
        raw[name] = random_labels(rng, (9, 11), [0, 1, 2, 7])
        save_image(tmp_path / "images" / f"{name}.jpg", rng.integers(0, 255, (9, 11, 3)))
        save_mask(tmp_path / "masks" / f"{name}_mask.png", raw[name])
    data = paired_folders(tmp_path / "images", tmp_path / "masks", 3, label_map={7: 255})
    assert [Path(i).stem for i, _ in data.files] == ["a", "b"]
    np.testing.assert_array_equal(first(data)[1], np.where(raw["a"] == 7, 255, raw["a"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = from_directory(tmp_path, "train", num_classes=3, label_map={7: 255})
    assert auto.num_examples == 2
    assert any("no split folders" in str(w.message) for w in caught)
    with pytest.raises(DataError, match=r"values .*\[7\] are outside \[0, 3\)"):
        validate(paired_folders(tmp_path / "images", tmp_path / "masks", 3), progress=False)


def test_paired_folders_per_split_and_class_file(tmp_path):
    rng = np.random.default_rng(4)
    for split in ("train", "val"):
        save_image(tmp_path / split / "images" / "x.png", rng.integers(0, 255, (8, 8, 3)))
        save_mask(tmp_path / split / "masks" / "x.png", np.ones((8, 8)))
    (tmp_path / "classes.txt").write_text("bg\nthing\n")
    data = from_directory(tmp_path, "val")
    assert data.class_names == ("bg", "thing") and "val" in data.files[0][0]
    with pytest.raises(DataError, match="split 'test' not found; available splits: train, val"):
        from_directory(tmp_path, "test")


def test_from_directory_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="unknown dataset layout"):
        from_directory(tmp_path, "train")
    with pytest.raises(DataError, match="dataset folder not found"):
        from_directory(tmp_path / "missing")


def test_palette_helpers():
    palette = voc_palette()
    assert palette.shape == (256, 3)
    assert tuple(palette[1]) == (128, 0, 0) and tuple(palette[15]) == (192, 128, 128)
    assert tuple(palette[255]) == (224, 224, 192)
    labels = np.array([[0, 1], [15, 255]], np.uint8)
    np.testing.assert_array_equal(colors_to_labels(colorize(labels)), labels)
    with pytest.raises(ValueError, match="not in the palette"):
        colors_to_labels(np.full((2, 2, 3), 7, np.uint8))


# ---------------------------------------------------------------------- real shared data


def test_camvid_real_data():
    root = shared_data_dir("camvid_segnet")
    data = from_directory(root, "val")  # CamVid detected from the folder name
    assert data.num_examples == 101 and data.num_classes == 11
    assert data.class_names == CAMVID_CLASSES
    assert validate(data, progress=False) is data
    assert camvid(root, "train").num_examples == 25
    image, mask = first(data)
    raw = np.asarray(Image.open(data.files[0][1]))
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    np.testing.assert_array_equal(mask, np.where(raw == 11, 255, raw))
    assert (raw == 11).any() and set(np.unique(mask)) <= set(range(11)) | {255}
    np.testing.assert_array_equal(image, np.asarray(Image.open(data.files[0][0]).convert("RGB")))


def test_isbi_real_data_binary_masks():
    root = shared_data_dir("isbi2012_membrane")
    with pytest.raises(DataError, match="mask_threshold=127"):
        from_directory(root, None)
    with pytest.warns(UserWarning, match="mask_threshold=127"):
        paired_folders(root / "image", root / "label", 2)
    data = load_data(str(root), None, num_classes=2, mask_threshold=127)
    assert data.num_examples == 30
    image, mask = first(data)
    gray = np.asarray(Image.open(data.files[0][0]))
    assert gray.ndim == 2 and image.shape == (512, 512, 3)
    for channel in range(3):  # grayscale replicated to RGB
        np.testing.assert_array_equal(image[..., channel], gray)
    assert set(np.unique(mask)) == {0, 1}
    assert 0.7 < mask.mean() < 0.85  # ~78% cell interior (255 -> 1)


def test_voc_samples_real_data():
    root = shared_data_dir("voc2012_samples")
    with pytest.warns(UserWarning, match="no ImageSets/Segmentation"):
        data = from_directory(root, "val")
    assert data.num_examples == 8 and data.num_classes == 21
    validate(data, progress=False)
    by_name = {Path(m).stem: k for k, (_, m) in enumerate(data.files)}
    image, mask = all_examples(data)[by_name["2007_000129"]]
    assert image.shape == (500, 334, 3)
    assert set(np.unique(mask)) == {0, 2, 15, 255}
    np.testing.assert_array_equal(
        mask, np.asarray(Image.open(root / "SegmentationClass/2007_000129.png"))
    )
    pil = np.asarray(Image.open(root / "JPEGImages/2007_000129.jpg").convert("RGB"))
    assert np.abs(image.astype(int) - pil).mean() < 2.0


def test_paired_folders_same_folder_and_duplicate_names(tmp_path):
    rng = np.random.default_rng(5)
    for name in ("p", "q"):
        save_image(tmp_path / f"{name}.png", rng.integers(0, 255, (6, 7, 3)))
        save_mask(tmp_path / f"{name}_mask.png", np.full((6, 7), 1))
    data = paired_folders(tmp_path, tmp_path, 2)
    assert [(Path(i).name, Path(m).name) for i, m in data.files] == [
        ("p.png", "p_mask.png"),
        ("q.png", "q_mask.png"),
    ]
    save_image(tmp_path / "p.jpg", rng.integers(0, 255, (6, 7, 3)))
    with pytest.raises(DataError, match=r"p.jpg and .*p.png have the same name|p.png and .*p.jpg"):
        paired_folders(tmp_path, tmp_path, 2)
