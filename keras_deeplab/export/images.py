"""Images for export: calibration and verification images from folders, arrays or iterables.

Everything here returns RGB float32 `[H, W, 3]` in [0, 255] at the export size (files and
uint8 arrays resized with PIL bilinear, float arrays with TF's antialiased bilinear), or,
for SavedModel verification, RGB uint8 images of any size (`sample_images`, `uint8_images`).

Example:

```python
from keras_deeplab.export.images import synthetic_images, take_images

calibration = take_images("images/", (257, 257), limit=100, what="representative_data")
checks = synthetic_images((257, 257), count=4)
```
"""

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_SAMPLE_IMAGES = 4
SAMPLE_SIZES = ((65, 97), (65, 97), (96, 128))  # SavedModel verification: mixed sizes


def _pil_resize(array, hw):
    from PIL import Image

    array = np.asarray(array, np.uint8)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    resized = np.asarray(image.resize((hw[1], hw[0]), Image.BILINEAR), np.float32)
    return resized.reshape(*hw, array.shape[-1])


def fit_image(image, hw, where):
    """One RGB (or 1-channel) image as float32 `[H, W, C]` at the export size `hw`."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"{where}: expected an RGB image [H, W, 3] (or [H, W, 1] for 1-channel models); "
            f"got shape {image.shape}."
        )
    if tuple(image.shape[:2]) == tuple(hw):
        return image.astype(np.float32)
    if image.dtype == np.uint8:
        return _pil_resize(image, hw)
    resized = tf.image.resize(image.astype(np.float32), hw, method="bilinear", antialias=True)
    return resized.numpy()


def image_files(folder):
    """Sorted image files (jpg / jpeg / png / bmp) of a folder; clear errors when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"image folder {folder} does not exist or is not a directory; pass a folder of "
            f"{'/'.join(IMAGE_SUFFIXES)} images."
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"image folder {folder} contains no {'/'.join(IMAGE_SUFFIXES)} images; add some "
            "(e.g. a few hundred training images) or pass an iterable of RGB arrays."
        )
    return files


def load_image(path, hw):
    """An image file as RGB float32 `[H, W, 3]` in [0, 255], PIL-bilinear-resized to `hw`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: not a readable image ({err}).") from None
    if rgb.size != (hw[1], hw[0]):
        rgb = rgb.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(rgb, np.float32)


def iter_images(source, hw, what):
    """RGB float32 `[H, W, 3]` images at `hw` from a folder, an array or an iterable.

    An iterable may yield images, batches `[N, H, W, 3]`, `(image, label)` pairs or dicts
    with an `image` / `images` key. `what` names the argument in errors.
    """
    if isinstance(source, str | os.PathLike):
        for path in image_files(source):
            yield load_image(path, hw)
        return
    if isinstance(source, np.ndarray | tf.Tensor):
        array = np.asarray(source)
        for i, image in enumerate(array if array.ndim == 4 else array[None]):
            yield fit_image(image, hw, f"{what}[{i}]")
        return
    if not isinstance(source, Iterable):
        raise ValueError(
            f"{what} must be an image folder, an array [N, H, W, 3] or an iterable of RGB "
            f"images; got {type(source).__name__}."
        )
    for i, item in enumerate(source):
        if isinstance(item, dict):
            item = item.get("image", item.get("images"))
        elif isinstance(item, tuple | list):
            item = item[0]  # (image, label) pairs
        array = np.asarray(item)
        for image in array if array.ndim == 4 else array[None]:
            yield fit_image(image, hw, f"{what} item {i}")


def take_images(source, hw, limit, what):
    """At most `limit` (None: all) images of `iter_images`; an error when there are none."""
    images = []
    for image in iter_images(source, hw, what):
        images.append(image)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{what} holds no images.")
    return images


def synthetic_images(hw, count=DEFAULT_SAMPLE_IMAGES, seed=0):
    """Smooth random RGB float32 images in [0, 255] at `hw` (verification without images)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, max(2, hw[0] // 8), max(2, hw[1] // 8), 3))
    smooth = tf.image.resize(coarse.astype(np.float32), hw, method="bicubic").numpy()
    noisy = smooth + rng.normal(0, 8, smooth.shape)
    return list(np.clip(noisy, 0, 255).astype(np.float32))


def sample_images(sizes=SAMPLE_SIZES):
    """Deterministic synthetic RGB uint8 images (smooth patterns + noise), one per size."""
    images = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w].astype("float32")
        smooth = np.stack(
            [255 * xx / w, 255 * yy / h, 127.5 + 127.5 * np.sin((xx + 2 * yy + 17 * i) / 9)], -1
        )
        noise = np.random.default_rng(i).normal(0, 24, (h, w, 3))
        images.append(np.clip(smooth + noise, 0, 255).astype("uint8"))
    return images


def to_channels(images, channels):
    """RGB `[H, W, 3]` images as `channels`-channel ones: unchanged for 3, their luma (ITU-R
    601, as `tf.image.rgb_to_grayscale`) for 1; images that already have `channels` pass."""
    converted = []
    for image in images:
        if image.shape[-1] == channels:
            converted.append(image)
        elif channels == 1 and image.shape[-1] == 3:
            luma = image.astype(np.float32) @ np.float32([0.2989, 0.587, 0.114])
            converted.append(luma[..., None].astype(image.dtype))
        else:
            raise ValueError(
                f"The model takes {channels}-channel images; got an image of shape {image.shape} "
                "(RGB images are converted for 1-channel models only)."
            )
    return converted


def overlap_tiled(images, model):
    """Images mirror-padded as models with smaller logits (valid U-Net) take them (each side
    by `model.overlap_tile_padding`); unchanged for other models."""
    tile = getattr(model, "overlap_tile_padding", None)
    if tile is None or tile(1) is None:
        return images
    return [
        np.pad(image, (tile(image.shape[0]), tile(image.shape[1]), (0, 0)), mode="reflect")
        for image in images
    ]


def uint8_images(images, size):
    """Verification images as a list of RGB uint8 `[H, W, 3]` (rounded and clipped), any
    sizes unless the model's input `size` is fixed; None: `sample_images` at that size."""
    if images is None:
        fixed = None not in size
        return sample_images([size, size] if fixed else SAMPLE_SIZES)
    if isinstance(images, np.ndarray | tf.Tensor) and len(images.shape) in (3, 4):
        images = np.asarray(images)
        images = list(images) if images.ndim == 4 else [images]
    result = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Sample images must be RGB [H, W, 3]; got shape {image.shape}.")
        if image.dtype != np.uint8:
            image = np.clip(np.round(image), 0, 255).astype("uint8")
        result.append(image)
    if not result:
        raise ValueError("verify_saved_model needs at least one sample image.")
    if None not in size and any(image.shape[:2] != size for image in result):
        raise ValueError(
            f"The model takes {size[0]}x{size[1]} images only; got sample images of sizes "
            f"{sorted({image.shape[:2] for image in result})}."
        )
    return result
