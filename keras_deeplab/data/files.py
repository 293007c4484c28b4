"""File sources: pairing image and mask files, and decoding them with tf.data.

`file_source(files, num_classes)` turns `((image_path, mask_path), ...)` into a
`SegmentationData` whose records are the path pairs, decoded in parallel with the rules of
`keras_deeplab.data.decode`. `pair_by_stem` matches the files of an image folder and a mask
folder by their path without extension (and an optional mask suffix); `list_files` lists a
folder's files of some extensions.
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_deeplab.data.contract import DataError, SegmentationData, listed
from keras_deeplab.data.decode import (
    IMAGE_EXTENSIONS,
    LOSSY_EXTENSIONS,
    MASK_EXTENSIONS,
    pil_image_to_rgb,
    read_mask,
    tf_decode_image,
    uses_pil,
)


def _as_str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def file_source(
    files,
    num_classes,
    *,
    ignore_label=255,
    class_names=None,
    name="files",
    label_lut=None,
):
    """`SegmentationData` decoding `((image_path, mask_path), ...)` in parallel with tf.data.

    Only cheap structural checks run here (files exist, supported formats); run
    `validate(data)` to scan sizes and mask values before training.

    Example:
        >>> data = file_source([("a.jpg", "a.png")], num_classes=3)  # doctest: +SKIP
    """
    files = tuple((str(i), str(m)) for i, m in files)
    if not files:
        raise DataError(f"{name}: no image/mask pairs found.")
    lut = np.arange(256, dtype=np.uint8) if label_lut is None else np.asarray(label_lut, np.uint8)
    if lut.shape != (256,):
        raise DataError(f"{name}: label_lut must have 256 entries; got shape {lut.shape}.")
    missing = [p for pair in files for p in pair if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{name}: {len(missing)} file(s) not found: {listed(missing)}.")
    _check_extensions(files, name)
    pil_images = uses_pil(files)
    num_classes = int(num_classes)

    def read_image_np(path):
        path = _as_str(path)
        with Image.open(path) as img:
            return pil_image_to_rgb(img, path)

    def read_mask_np(mask_path, image_path, image_hw):
        return read_mask(
            _as_str(mask_path),
            lut,
            num_classes,
            ignore_label,
            expected_hw=tuple(int(v) for v in image_hw),
            image_path=_as_str(image_path),
        )

    def decode(image_path, mask_path):
        if pil_images:
            image = tf.numpy_function(read_image_np, [image_path], tf.uint8, stateful=False)
        else:
            image = tf_decode_image(image_path)
        image = tf.ensure_shape(image, [None, None, 3])
        mask = tf.numpy_function(
            read_mask_np, [mask_path, image_path, tf.shape(image)[:2]], tf.uint8, stateful=False
        )
        mask = tf.ensure_shape(mask, [None, None])
        return image, mask

    records = tf.data.Dataset.from_tensor_slices(([f[0] for f in files], [f[1] for f in files]))
    return SegmentationData.from_records(
        records,
        decode,
        num_classes=num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        num_examples=len(files),
        name=name,
        files=files,
        label_lut=lut,
    )


def _check_extensions(files, name):
    bad_images = [i for i, _ in files if not i.lower().endswith(IMAGE_EXTENSIONS)]
    if bad_images:
        raise DataError(
            f"{name}: unsupported image format for {listed(bad_images)}; "
            f"use one of {', '.join(IMAGE_EXTENSIONS)}."
        )
    lossy = [m for _, m in files if m.lower().endswith(LOSSY_EXTENSIONS)]
    if lossy:
        raise DataError(
            f"{name}: lossy (JPEG/WebP) masks {listed(lossy)}: compression changes label values; "
            "store masks as PNG index images."
        )
    bad_masks = [m for _, m in files if not m.lower().endswith(MASK_EXTENSIONS)]
    if bad_masks:
        raise DataError(
            f"{name}: unsupported mask format for {listed(bad_masks)}; use PNG (or BMP/GIF/TIFF)."
        )


def pair_by_stem(image_files, mask_files, image_dir, mask_dir, name, mask_suffix=None):
    """Pair files whose paths (relative, without extension) match; `mask_suffix` ends mask stems.

    With `mask_suffix=None` the suffix is detected: "" or one of the common ones ("_mask",
    "_label", "_labels", "_gt", "_annot", "_L", ...) that pairs the most images.
    Every image needs a mask (else `DataError` listing the unmatched images).
    """

    def key(path, root, suffix=""):
        rel = Path(path).relative_to(root).with_suffix("")
        text = rel.as_posix()
        if suffix and text.endswith(suffix):
            return text[: -len(suffix)]
        return None if suffix else text

    all_images = {}
    for p in image_files:
        k = key(p, image_dir)
        if k in all_images:
            raise DataError(
                f"{name}: {all_images[k]} and {p} have the same name; keep one image per name."
            )
        all_images[k] = str(p)
    candidates = (
        [mask_suffix]
        if mask_suffix is not None
        else [
            "",
            "_mask",
            "_masks",
            "_label",
            "_labels",
            "_gt",
            "_annot",
            "_seg",
            "_L",
            "_labelIds",
        ]
    )
    best = None
    for suffix in candidates:
        masks = {}
        for p in mask_files:
            k = key(p, mask_dir, suffix)
            if k is not None:
                masks[k] = str(p)
        # images and masks may share a folder: a mask is never an image
        mask_paths = set(masks.values())
        images = {k: v for k, v in all_images.items() if v not in mask_paths}
        matched = sum(1 for k in images if k in masks)
        if best is None or matched > best[0]:
            best = (matched, suffix, masks, images)
    _, suffix, masks, images = best
    if not images:
        raise DataError(f"{name}: no images left in {image_dir} once the masks are set apart.")
    unmatched = sorted(v for k, v in images.items() if k not in masks)
    if unmatched:
        raise DataError(
            f"{name}: {len(unmatched)} of {len(images)} images in {image_dir} have no mask in "
            f"{mask_dir} (matched by file name without extension"
            f"{f', mask suffix {suffix!r}' if suffix else ''}): {listed(unmatched)}. "
            "Fix: add the masks, move those images out, or pass mask_suffix=..."
        )
    return tuple((images[k], masks[k]) for k in sorted(images))


def list_files(folder, extensions, recursive=True):
    """Sorted files under `folder` with one of `extensions` (case-insensitive)."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in extensions)
