"""`validate(data)`: scan a source before training; one error lists every bad file.

`validate` refuses empty, truncated (JPEG without end-of-image marker, PNG without IEND),
zero-sized and very large (> `MAX_IMAGE_PIXELS`, 8192 x 8192) files, masks whose size
differs from their image, mask values outside `[0, num_classes) ∪ {ignore_label}` after the
label table, and 16-bit images whose maximum is below `MIN_16BIT_MAXIMUM` (4096: they would
turn almost black at `v >> 8`; rescale them to 8 bits yourself). With `skip_bad=True` it
drops the bad examples instead (with one warning) and records them in `data.skipped`.
"""

import concurrent.futures
import dataclasses
import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_deeplab._progress import progress as progress_bar
from keras_deeplab.data.contract import MAX_LISTED, DataError, short
from keras_deeplab.data.decode import (
    PIL_IMAGE_EXTENSIONS,
    is_16bit,
    pil_image_to_rgb,
    read_mask,
    size_message,
    tf_decode_image,
    uses_pil,
)
from keras_deeplab.data.labels import bad_label_values

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
            image = tf_decode_image(str(path))
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
        if is_16bit(img.mode):
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
                    return size_message(mask_path, image_path, (img.height, img.width), image_hw)
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

    Example:
        >>> data = validate(paired_folders("images", "masks", 3), skip_bad=True)  # doctest: +SKIP
    """
    if data.files is None:
        return _validate_dataset(data, skip_bad=skip_bad, progress=progress)
    lut = data.label_lut if data.label_lut is not None else np.arange(256, dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    use_tf = not uses_pil(data.files)  # as the pipeline decodes (see `file_source`)

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
            progress_bar(
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

        num_examples = None if data.num_examples is None else total - len(bad)
        if data.records is not None:
            result = data.with_records(drop(data.records), num_examples=num_examples)
        else:
            result = dataclasses.replace(
                data, dataset=drop(data.dataset), num_examples=num_examples
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
    bad = []
    index = -1
    examples = progress_bar(
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
                        f"{where}: mask values {short(values)} outside [0, {data.num_classes}) "
                        f"and not {data.ignore_label}; fix the label_map / num_classes.",
                    )
                )
    return _report(data, bad, skip_bad, seen=index + 1)
