"""Segmentation data sources: the `SegmentationData` contract, file decoding and validation.

A *source* is a `SegmentationData`: an unbatched `tf.data.Dataset` of `(image uint8 [H, W, 3]
RGB, mask uint8 [H, W])` plus its metadata. File-based sources also keep their file list and
an undecoded `records` dataset (path pairs) with a `decode` function, so pipelines shuffle and
skip cheap path records and decode in parallel afterwards (`tf.data.AUTOTUNE`).

Decoding rules (the same in the pipeline and in `validate`):

* Images: JPEG / PNG / BMP / GIF / WebP are decoded by TensorFlow, TIFF by PIL. Grayscale
  is replicated to RGB (as the official `decode_image(channels=3)`); an alpha channel is
  dropped (not composited); palette images are expanded to their colours; 16-bit PNGs are
  scaled to 8 bits (`v >> 8`, TensorFlow's rule) and `validate` refuses 16-bit images whose
  maximum is below 4096 (they would turn almost black: rescale them to 8 bits yourself).
* `validate` also refuses empty, truncated (JPEG without end-of-image marker, PNG without
  IEND), zero-sized and very large (> `MAX_IMAGE_PIXELS`, 8192 x 8192) files.
* Masks are read with PIL so palette ('P') PNGs give their indices (TensorFlow would
  expand the palette to colours). Modes 'P', 'L', '1' are used as they are, 16-bit masks
  if every value is < 256, RGB masks only if their three channels are equal (a colour-coded
  mask is an error: convert it with `colors_to_labels`).
* Raw mask values go through a 256-entry lookup table (`label_lut`: threshold, label map,
  dataset conventions such as Cityscapes label ids -> train ids); the result must lie in
  `[0, num_classes)` or be `ignore_label`.

Errors raised here are `DataError` (a `ValueError`) naming the file and the fix.
"""

import concurrent.futures
import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

TF_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
PIL_IMAGE_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = TF_IMAGE_EXTENSIONS + PIL_IMAGE_EXTENSIONS
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")
MAX_LISTED = 10


class DataError(ValueError):
    """Bad or inconsistent dataset input; the message names the file(s) and the fix."""


@dataclasses.dataclass(eq=False)
class SegmentationData:
    """A segmentation data source (the contract between data and training).

    Attributes:
        dataset: unbatched `tf.data.Dataset` of `(image uint8 [H, W, 3] RGB, mask uint8 [H, W])`;
            sizes may differ between examples. Mask values are in `[0, num_classes)` or
            `ignore_label`.
        num_classes: number of classes (labels `0 .. num_classes - 1`).
        ignore_label: label of pixels excluded from loss and metrics (255 default).
        class_names: one name per class (generated `class_<i>` when not given).
        num_examples: number of examples, or None when unknown.
        name: short description used in messages and logs.
        files: `((image_path, mask_path), ...)` for file-based sources, else None.
        records: optional undecoded dataset (e.g. path pairs); `dataset` equals
            `records.map(decode)`. Pipelines shuffle / skip records before decoding.
        decode: function `(*record) -> (image, mask)` for `records`.
        label_lut: the 256-entry uint8 raw-value -> label table of file sources.
        skipped: `((path, reason), ...)` left out by `validate(..., skip_bad=True)`.
    """

    dataset: tf.data.Dataset
    num_classes: int
    ignore_label: int = 255
    class_names: tuple | None = None
    num_examples: int | None = None
    name: str = "data"
    files: tuple | None = None
    records: tf.data.Dataset | None = None
    decode: Callable | None = None
    label_lut: np.ndarray | None = None
    skipped: tuple = ()

    def __post_init__(self):
        if not isinstance(self.num_classes, (int, np.integer)) or not 1 <= self.num_classes <= 256:
            raise DataError(
                f"{self.name}: num_classes must be an int in 1..256; got {self.num_classes!r}."
            )
        self.num_classes = int(self.num_classes)
        if not 0 <= int(self.ignore_label) <= 255:
            raise DataError(
                f"{self.name}: ignore_label must be in 0..255 (masks are uint8); got {self.ignore_label}."
            )
        if self.ignore_label < self.num_classes:
            raise DataError(
                f"{self.name}: ignore_label {self.ignore_label} is also a class label "
                f"(num_classes={self.num_classes}); use an ignore label >= num_classes (255)."
            )
        if self.class_names is None:
            self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
        self.class_names = tuple(str(n) for n in self.class_names)
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class_names for num_classes={self.num_classes}."
            )
        if (self.records is None) != (self.decode is None):
            raise DataError(f"{self.name}: give both `records` and `decode`, or neither.")

    def with_files(self, files):
        """The same file source restricted to `files` (a subset of `self.files`)."""
        if self.files is None:
            raise DataError(f"{self.name}: not a file-based source.")
        return file_source(
            files,
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            class_names=self.class_names,
            name=self.name,
            label_lut=self.label_lut,
        )


# --------------------------------------------------------------------------- label tables


def label_lut(label_map=None, mask_threshold=None, base=None):
    """256-entry uint8 table: raw mask value -> label.

    Args:
        label_map: dict `{raw: label}` (other values unchanged), or a length-256 sequence
            (entry `v` = label of raw value `v`). Applied after `mask_threshold` / `base`.
        mask_threshold: binary masks: raw `v > mask_threshold` -> 1, else 0.
        base: table applied first (a dataset's convention, e.g. Cityscapes ids -> train ids).
    """
    table = np.arange(256, dtype=np.int64) if base is None else np.asarray(base, np.int64)
    if table.shape != (256,):
        raise DataError(f"label table must have 256 entries; got shape {table.shape}.")
    if mask_threshold is not None:
        if not 0 <= float(mask_threshold) < 255:
            raise DataError(f"mask_threshold must be in [0, 255); got {mask_threshold}.")
        table = (table > mask_threshold).astype(np.int64)
    if label_map is not None:
        if isinstance(label_map, dict):
            mapped = table.copy()
            for raw, label in label_map.items():
                if not (0 <= int(raw) <= 255 and 0 <= int(label) <= 255):
                    raise DataError(
                        f"label_map entries must map 0..255 to 0..255; got {raw!r}: {label!r}."
                    )
                mapped[table == int(raw)] = int(label)
            table = mapped
        else:
            values = np.asarray(label_map, np.int64)
            if values.shape != (256,) or values.min() < 0 or values.max() > 255:
                raise DataError(
                    "label_map must be a dict {raw: label} or 256 labels in 0..255 "
                    f"(got shape {values.shape})."
                )
            table = values[table]
    return table.astype(np.uint8)


def bad_label_values(labels, num_classes, ignore_label):
    """Sorted unique values of `labels` outside `[0, num_classes)` and != ignore_label."""
    values = np.unique(labels)
    return values[(values >= num_classes) & (values != ignore_label)]


def _mask_fix_hint(num_classes, ignore_label, raw_values):
    raw = np.asarray(raw_values)
    hints = [
        f"pass the right num_classes (now {num_classes}) or a label_map "
        f"{{raw: label}} sending those values into [0, {num_classes}) or to {ignore_label} (ignore)"
    ]
    if raw.size and set(raw.tolist()) <= {0, 1, 255} and 255 in raw:
        hints.append("binary 0/255 masks: pass mask_threshold=127 and num_classes=2")
    return "; or ".join(hints)


def fixed_classes(where, names, num_classes=None, class_names=None, label_map=None):
    """`(num_classes, class_names)` of a dataset with a fixed class list `names`.

    An explicit `num_classes` / `class_names` must agree with `names` unless the caller
    relabels the masks with its own `label_map`; otherwise it is a `DataError` naming both
    counts.
    """
    if label_map is not None:
        if class_names is not None:
            return num_classes or len(class_names), class_names
        num_classes = num_classes or len(names)
        return num_classes, names if num_classes == len(names) else None
    wanted = len(class_names) if class_names is not None else num_classes
    if wanted is not None and wanted != len(names):
        raise DataError(
            f"{where}: num_classes={wanted} but the dataset has {len(names)} classes; fix: "
            f"pass num_classes={len(names)} (CLI: --num-classes {len(names)}) or leave it out, "
            "or relabel the masks with a label_map."
        )
    return len(names), tuple(class_names) if class_names is not None else names


# --------------------------------------------------------------------------- PIL readers


def _is_16bit(mode):
    return mode.startswith("I;16") or mode == "I"


def pil_image_to_rgb(img, path):
    """PIL image -> uint8 `[H, W, 3]` with the module's rules (gray->RGB, alpha dropped, 16->8 bit)."""
    if _is_16bit(img.mode):
        array = np.asarray(img).astype(np.int64)
        if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
            raise DataError(f"{path}: image values outside 0..65535 (mode {img.mode}).")
        array = (array >> 8).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if img.mode == "F":
        raise DataError(
            f"{path}: floating-point image (mode F); save it as 8-bit RGB or grayscale PNG/JPEG."
        )
    return np.asarray(img.convert("RGB"))


def mask_from_pil(img, path):
    """PIL mask -> raw uint8 `[H, W]` values (before the label table)."""
    mode = img.mode
    if mode in ("P", "L"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode in ("LA", "PA"):
        return np.asarray(img)[..., 0]
    if _is_16bit(mode):
        array = np.asarray(img)
        if array.size and (array.max() > 255 or array.min() < 0):
            raise DataError(
                f"{path}: 16-bit mask with values up to {array.max()}; labels must be 0..255 "
                "(re-save it as an 8-bit 'L' or palette PNG with values < 256)."
            )
        return array.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        array = np.asarray(img)[..., :3]
        if (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
            return np.ascontiguousarray(array[..., 0])
        raise DataError(
            f"{path}: colour-coded RGB mask; masks must hold class indices (mode 'L' or 'P'). "
            "Convert it with keras_deeplab.data.colors_to_labels(rgb, palette) and save as PNG."
        )
    raise DataError(f"{path}: unsupported mask mode {mode!r}; save it as an 8-bit 'L' or 'P' PNG.")


def read_mask(path, lut, num_classes, ignore_label, expected_hw=None, image_path=None):
    """Read, map and check one mask file; returns uint8 `[H, W]` labels."""
    try:
        with Image.open(path) as img:
            raw = mask_from_pil(img, path)
    except DataError:
        raise
    except Exception as error:  # PIL raises many types for broken files
        raise DataError(f"{path}: cannot read mask ({error}).") from error
    if expected_hw is not None and tuple(raw.shape[:2]) != tuple(expected_hw):
        raise DataError(_size_message(path, image_path, raw.shape[:2], expected_hw))
    labels = lut[raw]
    bad = bad_label_values(labels, num_classes, ignore_label)
    if bad.size:
        raw_bad = np.unique(raw[np.isin(labels, bad)])
        raise DataError(
            f"{path}: mask values {_short(raw_bad)} are outside [0, {num_classes}) and not the "
            f"ignore label {ignore_label} (after the label map); fix: "
            f"{_mask_fix_hint(num_classes, ignore_label, np.unique(raw))}."
        )
    return labels


def _short(values, limit=8):
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:limit]))
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def _size_message(mask_path, image_path, mask_hw, image_hw):
    return (
        f"{mask_path}: mask size {mask_hw[1]}x{mask_hw[0]} (WxH) differs from its image "
        f"{image_path} ({image_hw[1]}x{image_hw[0]}); fix: re-export the mask at the image size "
        "(nearest-neighbour resize) or remove the pair."
    )


# --------------------------------------------------------------------------- file sources


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
    """
    files = tuple((str(i), str(m)) for i, m in files)
    if not files:
        raise DataError(f"{name}: no image/mask pairs found.")
    lut = np.arange(256, dtype=np.uint8) if label_lut is None else np.asarray(label_lut, np.uint8)
    if lut.shape != (256,):
        raise DataError(f"{name}: label_lut must have 256 entries; got shape {lut.shape}.")
    missing = [p for pair in files for p in pair if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{name}: {len(missing)} file(s) not found: {_list(missing)}.")
    _check_extensions(files, name)
    pil_images = any(i.lower().endswith(PIL_IMAGE_EXTENSIONS) for i, _ in files)
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
            image = tf.io.decode_image(
                tf.io.read_file(image_path), channels=3, dtype=tf.uint8, expand_animations=False
            )
        image = tf.ensure_shape(image, [None, None, 3])
        mask = tf.numpy_function(
            read_mask_np, [mask_path, image_path, tf.shape(image)[:2]], tf.uint8, stateful=False
        )
        mask = tf.ensure_shape(mask, [None, None])
        return image, mask

    records = tf.data.Dataset.from_tensor_slices(([f[0] for f in files], [f[1] for f in files]))
    dataset = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return SegmentationData(
        dataset=dataset,
        num_classes=num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        num_examples=len(files),
        name=name,
        files=files,
        records=records,
        decode=decode,
        label_lut=lut,
    )


def _list(items, limit=MAX_LISTED):
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_extensions(files, name):
    bad_images = [i for i, _ in files if not i.lower().endswith(IMAGE_EXTENSIONS)]
    if bad_images:
        raise DataError(
            f"{name}: unsupported image format for {_list(bad_images)}; "
            f"use one of {', '.join(IMAGE_EXTENSIONS)}."
        )
    lossy = [m for _, m in files if m.lower().endswith(LOSSY_EXTENSIONS)]
    if lossy:
        raise DataError(
            f"{name}: lossy (JPEG/WebP) masks {_list(lossy)}: compression changes label values; "
            "store masks as PNG index images."
        )
    bad_masks = [m for _, m in files if not m.lower().endswith(MASK_EXTENSIONS)]
    if bad_masks:
        raise DataError(
            f"{name}: unsupported mask format for {_list(bad_masks)}; use PNG (or BMP/GIF/TIFF)."
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
            f"{f', mask suffix {suffix!r}' if suffix else ''}): {_list(unmatched)}. "
            "Fix: add the masks, move those images out, or pass mask_suffix=..."
        )
    return tuple((images[k], masks[k]) for k in sorted(images))


def list_files(folder, extensions, recursive=True):
    """Sorted files under `folder` with one of `extensions` (case-insensitive)."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in extensions)


# --------------------------------------------------------------------------- validation

# Largest image (pixels) `validate` accepts: 8192 x 8192. Bigger files are usually a mistake
# (a scan, a panorama, a decompression bomb) and would take gigabytes once decoded and
# augmented. Pass `validate(..., max_pixels=...)` to allow them.
MAX_IMAGE_PIXELS = 8192 * 8192
# 16-bit images are scaled to 8 bits by `v >> 8` (TensorFlow's rule); data whose maximum is
# below this (e.g. 12-bit sensors) would collapse to a few gray levels, so it is an error.
MIN_16BIT_MAXIMUM = 4096
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


def _file_problem(path, kind):
    """Reason string for a missing / empty file, a truncated JPEG/PNG or a 0-sized PNG, else None.

    Reads only the first and last bytes, so it is cheap enough to run on every file.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(32)
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError as error:
        return f"{path}: cannot read {kind} ({error.strerror or error})."
    if size == 0:
        return f"{path}: empty {kind} file (0 bytes); fix: copy it again or remove the pair."
    if head.startswith(_PNG_SIGNATURE):
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[12:16] == b"IHDR" and (width == 0 or height == 0):
            return (
                f"{path}: zero-sized {kind} ({width}x{height} in its PNG header); "
                "fix: export it again or remove the pair."
            )
        if _PNG_IEND not in tail:
            return (
                f"{path}: truncated PNG {kind} (no IEND chunk at the end, {size} bytes); "
                "fix: copy or export it again, or remove the pair."
            )
    elif head.startswith(b"\xff\xd8"):
        # Encoders may pad after the end-of-image marker; a missing marker means truncation.
        if _JPEG_EOI not in tail.rstrip(b"\x00\n\r "):
            return (
                f"{path}: truncated JPEG {kind} (no end-of-image marker, {size} bytes); "
                "fix: copy or export it again, or remove the pair."
            )
    return None


def _too_large(path, kind, width, height, max_pixels):
    return (
        f"{path}: {kind} is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
        f"{max_pixels / 1e6:.0f} MP limit; fix: downscale or tile it (masks with nearest "
        "neighbour), or raise validate(..., max_pixels=...)."
    )


def _open_header(path, kind, max_pixels):
    """`(PIL image, None)` with only the header read, or `(None, reason)`."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as error:
        return (
            None,
            f"{path}: {kind} too large to decode safely ({error}); fix: downscale or tile it.",
        )
    except Exception as error:  # PIL raises many types for broken files
        return None, f"{path}: cannot read {kind} ({error}); is it a valid image file?"
    if img.width * img.height > max_pixels:
        img.close()
        return None, _too_large(path, kind, img.width, img.height, max_pixels)
    return img, None


def _decode_image(path, img, use_tf):
    """Decodes like the pipeline (TensorFlow for JPEG/PNG/..., PIL for TIFF); reason or None."""
    if use_tf and not str(path).lower().endswith(PIL_IMAGE_EXTENSIONS):
        try:
            image = tf.io.decode_image(
                tf.io.read_file(str(path)), channels=3, dtype=tf.uint8, expand_animations=False
            )
        except tf.errors.OpError as error:
            message = " ".join(error.message.split("}}")[-1].split())
            return (
                f"{path}: TensorFlow cannot decode this image ({message}); fix: re-save it as "
                "an 8-bit RGB JPEG/PNG or remove the pair."
            )
        if tuple(image.shape[:2]) != (img.height, img.width):
            return f"{path}: decoded size {image.shape[:2]} differs from its header."
        return None
    try:
        pil_image_to_rgb(img, path)
    except DataError as error:
        return str(error)
    except Exception as error:
        return f"{path}: cannot decode image ({error}); fix: re-save it or remove the pair."
    return None


def _check_16bit(path, img):
    maximum = int(np.asarray(img).max(initial=0))
    if maximum < MIN_16BIT_MAXIMUM:
        return (
            f"{path}: 16-bit image whose maximum value is {maximum}: the 8-bit conversion "
            f"(v >> 8) would leave {(maximum >> 8) + 1} gray level(s). Fix: rescale it to 8 bits "
            "yourself (e.g. (a * 255 / a.max()).astype('uint8')) and save an 8-bit PNG."
        )
    return None


def _check_pair(
    image_path,
    mask_path,
    lut,
    num_classes,
    ignore_label,
    check_values,
    decode,
    max_pixels=MAX_IMAGE_PIXELS,
    use_tf=True,
):
    """Reason string when the pair is bad, else None."""
    reason = _file_problem(image_path, "image")
    if reason:
        return reason
    img, reason = _open_header(image_path, "image", max_pixels)
    if reason:
        return reason
    with img:
        image_hw = (img.height, img.width)
        if img.mode == "F":
            return f"{image_path}: floating-point image (mode F); save it as 8-bit RGB."
        if _is_16bit(img.mode):
            reason = _check_16bit(image_path, img)
            if reason:
                return reason
        if decode:
            reason = _decode_image(image_path, img, use_tf)
            if reason:
                return reason
    reason = _file_problem(mask_path, "mask")
    if reason:
        return reason
    try:
        if check_values:
            read_mask(mask_path, lut, num_classes, ignore_label, image_hw, image_path)
        else:
            with Image.open(mask_path) as img:
                if (img.height, img.width) != image_hw:
                    return _size_message(mask_path, image_path, (img.height, img.width), image_hw)
    except DataError as error:
        return str(error)
    except Exception as error:
        return f"{mask_path}: cannot read mask ({error})."
    return None


def validate(
    data,
    *,
    skip_bad=False,
    check_values=True,
    decode_images=False,
    progress=True,
    workers=None,
    max_pixels=MAX_IMAGE_PIXELS,
):
    """Scan every example of `data` before training; one error lists all bad files.

    File sources: every file is checked for being empty or truncated (JPEG end-of-image
    marker, PNG IEND chunk: only the file's ends are read), image and mask headers (sizes
    must match, at most `max_pixels`), 16-bit images (their range must survive `v >> 8`)
    and, with `check_values`, every mask decoded and checked against
    `[0, num_classes) ∪ {ignore_label}` after the label map. `decode_images=True` also
    decodes every image with the pipeline's decoder (TensorFlow; PIL for TIFF), so nothing
    the scan passes can fail inside an epoch. Other sources (shapes, TFDS) are iterated and
    checked the same way.

    Args:
        data: a `SegmentationData`.
        skip_bad: instead of raising, drop the bad examples (a warning counts and lists them;
            the returned data's `skipped` holds `(path, reason)` pairs).
        check_values: decode masks and check their values (else sizes only).
        decode_images: also fully decode images.
        progress: show a tqdm progress bar.
        workers: threads for the scan (default: min(8, CPU count)).
        max_pixels: largest image accepted (`MAX_IMAGE_PIXELS`, 8192 x 8192).

    Returns:
        `data` (unchanged) or, with `skip_bad`, a new source without the bad examples.
    """
    from tqdm.auto import tqdm

    if data.files is None:
        return _validate_dataset(data, skip_bad=skip_bad, progress=progress)
    lut = data.label_lut if data.label_lut is not None else np.arange(256, dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    # the pipeline decodes with PIL as soon as one image is a TIFF (see `file_source`)
    use_tf = not any(i.lower().endswith(PIL_IMAGE_EXTENSIONS) for i, _ in data.files)

    def check(pair):
        return _check_pair(
            pair[0],
            pair[1],
            lut,
            data.num_classes,
            data.ignore_label,
            check_values,
            decode_images,
            max_pixels,
            use_tf,
        )

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(check, data.files),
                total=len(data.files),
                desc=f"validating {data.name}",
                disable=not progress,
                leave=False,
            )
        )
    bad = [(pair, reason) for pair, reason in zip(data.files, results, strict=True) if reason]
    return _report(data, bad, skip_bad)


def _report(data, bad, skip_bad, seen=None):
    if not bad:
        return data
    total = data.num_examples if data.num_examples is not None else seen
    lines = "\n".join(f"  - {reason}" for _, reason in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    summary = f"{data.name}: {len(bad)} of {total} examples are bad:\n{lines}{more}"
    if not skip_bad:
        raise DataError(
            summary + "\nFix them, or leave them out: --skip-bad (CLI), "
            "data.options.skip_bad=true (config), skip_bad=True (Python)."
        )
    warnings.warn(summary + "\nThey are skipped (skip_bad).", stacklevel=3)
    if data.files is not None:
        bad_pairs = {pair for pair, _ in bad}
        kept = [pair for pair in data.files if pair not in bad_pairs]
        if not kept:
            raise DataError(f"{data.name}: every example is bad; nothing left to use.")
        result = data.with_files(kept)
        skipped = tuple((pair[1], reason) for pair, reason in bad)
    else:
        indices = tf.constant([index for index, _ in bad], tf.int64)

        def drop(ds):
            return (
                ds.enumerate()
                .filter(lambda i, example: tf.logical_not(tf.reduce_any(tf.equal(i, indices))))
                .map(lambda i, example: example)
            )

        records = dataset = None
        if data.records is not None:
            records = drop(data.records)
            dataset = records.map(data.decode, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            dataset = drop(data.dataset)
        result = dataclasses.replace(
            data,
            dataset=dataset,
            records=records,
            num_examples=None if data.num_examples is None else total - len(bad),
        )
        skipped = tuple((f"example {index}", reason) for index, reason in bad)
    return dataclasses.replace(result, skipped=data.skipped + skipped)


def _examples(data):
    """Yield `(image, mask)` numpy pairs, or a reason string when decoding one fails."""
    if data.records is None:
        yield from data.dataset.as_numpy_iterator()
        return
    for record in data.records:
        try:
            image, mask = data.decode(*record)
            yield image.numpy(), mask.numpy()
        except (tf.errors.InvalidArgumentError, DataError) as error:
            message = getattr(error, "message", str(error)).strip()
            # in-graph assertions: keep only their message and data
            message = message.split("Summarized data: ", 1)[-1].replace("b'", "").replace("'", "")
            yield " ".join(message.split())


def _validate_dataset(data, skip_bad, progress):
    from tqdm.auto import tqdm

    bad = []
    index = -1
    examples = tqdm(
        _examples(data),
        total=data.num_examples,
        desc=f"validating {data.name}",
        disable=not progress,
    )
    for index, example in enumerate(examples):
        where = f"{data.name} example {index}"
        if isinstance(example, str):
            bad.append((index, f"{where}: {example}"))
            continue
        image, mask = example
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            bad.append(
                (index, f"{where}: image {image.dtype} {image.shape}, expected uint8 [H, W, 3].")
            )
        elif mask.shape != image.shape[:2]:
            bad.append(
                (index, f"{where}: mask shape {mask.shape} != image size {image.shape[:2]}.")
            )
        else:
            values = bad_label_values(mask, data.num_classes, data.ignore_label)
            if values.size:
                bad.append(
                    (
                        index,
                        f"{where}: mask values {_short(values)} outside [0, {data.num_classes}) "
                        f"and not {data.ignore_label}; fix the label_map / num_classes.",
                    )
                )
    return _report(data, bad, skip_bad, seen=index + 1)
