"""Decoding image and mask files (the same rules in the pipeline and in `validate`).

* Images: JPEG / PNG / BMP / GIF / WebP are decoded by TensorFlow (`tf_decode_image`), TIFF
  by PIL (`pil_image_to_rgb`; a source with one TIFF decodes every image with PIL, see
  `uses_pil`). Grayscale is replicated to RGB (as the official `decode_image(channels=3)`);
  an alpha channel is dropped (not composited); palette images are expanded to their
  colours; 16-bit PNGs are scaled to 8 bits (`v >> 8`, TensorFlow's rule).
* Masks are read with PIL so palette ('P') PNGs give their indices (TensorFlow would
  expand the palette to colours). Modes 'P', 'L', '1' are used as they are, 16-bit masks
  if every value is < 256, RGB masks only if their three channels are equal (a colour-coded
  mask is an error: convert it with `colors_to_labels`). `read_mask` maps the raw values
  through the label table and checks them.
"""

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_deeplab.data.contract import DataError, short
from keras_deeplab.data.labels import bad_label_values, mask_fix_hint

TF_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
PIL_IMAGE_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = TF_IMAGE_EXTENSIONS + PIL_IMAGE_EXTENSIONS
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


def uses_pil(files):
    """True when a source of `((image, mask), ...)` pairs decodes its images with PIL (a TIFF)."""
    return any(str(i).lower().endswith(PIL_IMAGE_EXTENSIONS) for i, _ in files)


def tf_decode_image(path):
    """uint8 `[H, W, 3]` tensor of a JPEG / PNG / BMP / GIF / WebP file (first frame)."""
    return tf.io.decode_image(
        tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False
    )


def is_16bit(mode):
    """True for PIL's 16/32-bit integer modes (`I;16*`, `I`)."""
    return mode.startswith("I;16") or mode == "I"


def pil_image_to_rgb(img, path):
    """PIL image -> uint8 `[H, W, 3]` with the module's rules (gray->RGB, alpha dropped, 16->8 bit)."""
    if is_16bit(img.mode):
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
    if is_16bit(mode):
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
        raise DataError(size_message(path, image_path, raw.shape[:2], expected_hw))
    labels = lut[raw]
    bad = bad_label_values(labels, num_classes, ignore_label)
    if bad.size:
        raw_bad = np.unique(raw[np.isin(labels, bad)])
        raise DataError(
            f"{path}: mask values {short(raw_bad)} are outside [0, {num_classes}) and not the "
            f"ignore label {ignore_label} (after the label map); fix: "
            f"{mask_fix_hint(num_classes, ignore_label, np.unique(raw))}."
        )
    return labels


def size_message(mask_path, image_path, mask_hw, image_hw):
    """The error for a mask whose size differs from its image's."""
    return (
        f"{mask_path}: mask size {mask_hw[1]}x{mask_hw[0]} (WxH) differs from its image "
        f"{image_path} ({image_hw[1]}x{image_hw[0]}); fix: re-export the mask at the image size "
        "(nearest-neighbour resize) or remove the pair."
    )
