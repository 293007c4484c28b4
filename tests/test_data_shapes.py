"""The synthetic `shapes` set: determinism, splits, speed, colour carries no class information."""

import numpy as np
import pytest

from keras_deeplab.data import generate_shapes, shapes, validate


def test_shapes_source_contract():
    data = shapes("train", num_examples=6, image_size=(40, 56))
    assert data.num_classes == 5 and data.num_examples == 6 and data.ignore_label == 255
    assert data.class_names == ("background", "circle", "square", "triangle", "cross")
    image, mask = next(iter(data.dataset))
    assert image.dtype == "uint8" and image.shape == (40, 56, 3) and mask.shape == (40, 56)
    validate(data, progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        shapes("training-set")


def test_shapes_deterministic_prefix_and_disjoint_splits():
    a_images, a_masks = generate_shapes("train", 16, 48, seed=3)
    b_images, b_masks = generate_shapes("train", 16, 48, seed=3)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_masks, b_masks)
    prefix_images, _ = generate_shapes("train", 5, 48, seed=3)
    np.testing.assert_array_equal(prefix_images, a_images[:5])
    other, _ = generate_shapes("train", 16, 48, seed=4)
    val, _ = generate_shapes("val", 16, 48, seed=3)
    test, _ = generate_shapes("test", 16, 48, seed=3)
    for images in (other, val, test):
        assert not any(np.array_equal(x, y) for x in images for y in a_images)


def test_shapes_default_sizes_and_dtypes():
    # (speed is the benchmarks' business: no timing here)
    images, masks = generate_shapes("train", 512, 96)
    assert images.shape == (512, 96, 96, 3) and masks.shape == (512, 96, 96)
    assert images.dtype == np.uint8 and masks.dtype == np.uint8
    assert masks.max() <= 4


def test_every_class_present_with_objects_and_occlusion():
    images, masks = generate_shapes("train", 256, 64)
    fractions = np.bincount(masks.reshape(-1), minlength=5) / masks.size
    assert fractions[0] > 0.5 and (fractions[1:] > 0.02).all(), fractions
    assert set(np.unique(masks)) == {0, 1, 2, 3, 4}
    assert all(len(np.unique(m)) >= 2 for m in masks)  # every image has an object
    assert images.std() > 50  # varied colours / textures


def _colour_bins(images, masks, levels=4):
    q = (images.astype(np.int64) * levels) // 256
    bins = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
    objects = masks > 0
    return bins[objects], masks[objects]


def test_colour_does_not_predict_the_class():
    """Per-class mean colours agree, and a colour-histogram classifier is no better than chance."""
    images, masks = generate_shapes("train", 512, 64)
    for channel in range(3):
        means = [images[..., channel][masks == c].mean() for c in range(5)]
        assert max(means) - min(means) < 20, means
    train_bins, train_labels = _colour_bins(images, masks)
    counts = np.zeros((64, 5))
    np.add.at(counts, (train_bins, train_labels), 1)
    prior = np.bincount(train_labels, minlength=5)
    val_images, val_masks = generate_shapes("val", 256, 64)
    val_bins, val_labels = _colour_bins(val_images, val_masks)
    colour_accuracy = (counts.argmax(1)[val_bins] == val_labels).mean()
    majority_accuracy = (val_labels == prior.argmax()).mean()
    assert colour_accuracy < majority_accuracy + 0.05, (colour_accuracy, majority_accuracy)
