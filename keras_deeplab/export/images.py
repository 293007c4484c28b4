"""Images for export: calibration and verification images from folders, arrays or iterables.

Everything here returns RGB float32 `[H, W, 3]` in [0, 255] at the export size (files and
uint8 arrays resized with PIL bilinear, float arrays with TF's antialiased bilinear).

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


def _pil_resize(array, hw):
    from PIL import Image

    image = Image.fromarray(np.asarray(array, np.uint8))
    return np.asarray(image.resize((hw[1], hw[0]), Image.BILINEAR), np.float32)


def fit_image(image, hw, where):
    """One RGB image as float32 `[H, W, 3]` at the export size `hw`."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: expected an RGB image [H, W, 3]; got shape {image.shape}.")
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
