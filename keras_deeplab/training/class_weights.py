"""Median-frequency class weighting (Eigen & Fergus 2015, the SegNet recipe).

SegNet (Badrinarayanan, Kendall, Cipolla, TPAMI 2017) weights each class's loss by
`median(freq) / freq(c)`, where `freq(c)` is the number of pixels of class `c` divided by
the number of pixels of the images in which `c` is present. Ignored pixels count in
neither. `loss.class_weights: median_frequency` in a training config computes the weights
from the training labels once, before the first step (`training.run`), prints them and
records them in the run's `config.yaml`.

Example:

```python
from keras_deeplab.training.class_weights import median_frequency_weights

labels = [np.array([[0, 0, 1], [0, 255, 1]], np.uint8)]
median_frequency_weights(labels, num_classes=2, ignore_label=255)  # [0.833..., 1.25]
```
"""

import numpy as np

# The official SegNet-Tutorial CamVid weights (`segnet_train.prototxt`, Sky ... Bicyclist).
SEGNET_CAMVID_WEIGHTS = (
    0.2595,
    0.1826,
    4.5640,
    0.1417,
    0.9051,
    0.3826,
    9.6446,
    1.8418,
    0.6823,
    6.2478,
    7.3614,
)


def class_pixel_counts(labels, num_classes, ignore_label=255):
    """`(pixels, image_pixels)`: per class, its pixel count and the labelled pixels of the
    images it appears in. `labels` is an iterable of integer label arrays."""
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for label in labels:
        label = np.asarray(label).reshape(-1)
        counts = np.bincount(label[label != ignore_label].astype(np.int64), minlength=num_classes)
        if counts.size > num_classes:
            raise ValueError(
                f"labels hold class {counts.size - 1} but num_classes={num_classes} "
                f"(ignore label {ignore_label}); fix num_classes or the ignore label."
            )
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    return pixels, image_pixels


def median_frequency_weights(labels, num_classes, ignore_label=255):
    """Per-class weights `median(freq) / freq(c)` (list of floats, one per class).

    Args:
        labels: an iterable of integer label arrays (any shape), e.g. the training masks.
        num_classes: number of classes.
        ignore_label: label left out of every count.

    A class absent from every label gets weight 1.0 (it never reaches the loss); the median
    is over the classes present. Raises `ValueError` when no pixel is labelled.

    Example:
        >>> median_frequency_weights([np.array([0, 0, 0, 1])], 2)
        [0.6666666666666666, 2.0]
    """
    pixels, image_pixels = class_pixel_counts(labels, num_classes, ignore_label)
    present = pixels > 0
    if not present.any():
        raise ValueError(
            "median-frequency weights need labelled pixels; every label was the ignore label "
            f"{ignore_label} (or there were no labels): check the training data."
        )
    freq = np.where(present, pixels / np.maximum(image_pixels, 1), 0.0)
    median = float(np.median(freq[present]))
    return [float(median / f) if f > 0 else 1.0 for f in freq]


def source_masks(source):
    """The label arrays of a `SegmentationData` source, one per example (numpy)."""
    for _, mask in source.dataset.as_numpy_iterator():
        yield mask


def source_weights(source):
    """`median_frequency_weights` of every mask of a `SegmentationData` source."""
    return median_frequency_weights(source_masks(source), source.num_classes, source.ignore_label)


__all__ = [
    "SEGNET_CAMVID_WEIGHTS",
    "class_pixel_counts",
    "median_frequency_weights",
    "source_weights",
]
