"""`shapes`: a deterministic synthetic segmentation set generated in-process with numpy.

Classes: 0 background, 1 circle, 2 square, 3 triangle, 4 cross. Each image has a textured
background (flat, gradient, stripes, checker or blotches) and 1..`max_objects` objects of
random class, size, rotation and position; later objects may partly occlude earlier ones.
Every object and background colour is drawn from the same distribution (uniform RGB, kept
apart from the local background), objects may be flat, striped or shaded, and Gaussian colour
noise is added: colour says nothing about the class, shape does.

Example `i` of a split depends only on `(seed, split, i)`, so a smaller `num_examples` is a
prefix of a larger one, and the splits ("train", "val", "test") use disjoint seed streams.
"""

import numpy as np
import tensorflow as tf

from keras_deeplab.data.contract import SegmentationData

CLASS_NAMES = ("background", "circle", "square", "triangle", "cross")
SPLITS = {"train": 0, "val": 1, "validation": 1, "test": 2}
DEFAULT_SIZES = {"train": 512, "val": 128, "validation": 128, "test": 128}
_MIN_CONTRAST = 90.0  # min RGB distance between an object colour and the background under it


def _size(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


def _background(rng, yy, xx):
    h, w = yy.shape
    c1, c2 = rng.uniform(0, 255, (2, 3))
    kind = rng.integers(5)
    angle = rng.uniform(0, np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
    if kind == 0:
        mix = np.zeros((h, w), np.float32)
    elif kind == 1:
        mix = t - t.min()
        mix = mix / max(mix.max(), 1e-6)
    elif kind == 2:
        period = rng.uniform(0.08, 0.3)
        mix = (np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3)) > 0).astype(np.float32)
    elif kind == 3:
        cell = int(rng.integers(6, 20))
        mix = (((yy.astype(np.int32) // cell) + (xx.astype(np.int32) // cell)) % 2).astype(
            np.float32
        )
    else:
        grid = rng.uniform(0, 1, (5, 5)).astype(np.float32)
        ys = np.linspace(0, 4, h, dtype=np.float32)
        xs = np.linspace(0, 4, w, dtype=np.float32)
        y0, x0 = np.minimum(ys.astype(int), 3), np.minimum(xs.astype(int), 3)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
        bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
        mix = top * (1 - fy) + bottom * fy
    return c1 + (c2 - c1) * mix[..., None]


def _shape_mask(cls, u, v, r):
    """Pixels inside a shape of class `cls` with rotated, centred coordinates `u, v`."""
    if cls == 1:  # circle
        return u * u + v * v <= r * r
    if cls == 2:  # square
        s = 0.82 * r
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    if cls == 3:  # equilateral triangle, circumradius 1.15 r
        inner = 0.575 * r
        inside = v <= inner
        for angle in (np.pi / 6 + np.pi, -np.pi / 6):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= inner
        return inside
    arm = 0.32 * r  # cross (plus sign)
    return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))


def _object_colour(rng, under):
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _render(rng, yy, xx, max_objects):
    h, w = yy.shape
    image = _background(rng, yy, xx)
    mask = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        for _attempt in range(6):
            r = rng.uniform(0.15, 0.27) * side
            cy, cx = rng.uniform(r * 0.8, h - r * 0.8), rng.uniform(r * 0.8, w - r * 0.8)
            angle = rng.uniform(0, 2 * np.pi)
            y0, y1 = max(int(cy - 1.2 * r), 0), min(int(cy + 1.2 * r) + 2, h)
            x0, x1 = max(int(cx - 1.2 * r), 0), min(int(cx + 1.2 * r) + 2, w)
            dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            inside = _shape_mask(cls, u, v, r)
            area = inside.sum()
            # partial occlusion only: at most 30% of the new object over earlier objects
            if area and (mask[y0:y1, x0:x1][inside] > 0).mean() <= 0.3:
                break
        else:
            continue
        region = image[y0:y1, x0:x1]
        colour = _object_colour(rng, region[inside].mean(0))
        style = rng.integers(3)
        if style == 0:
            fill = np.broadcast_to(colour, region.shape)
        else:
            other = np.clip(colour + rng.uniform(-60, 60, 3), 0, 255)
            if style == 1:  # stripes
                period = rng.uniform(0.3, 0.8) * r
                mix = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)[..., None]
            else:  # shading across the object
                mix = np.clip((v / (2 * r) + 0.5), 0, 1)[..., None]
            fill = colour + (other - colour) * mix
        region[inside] = fill[inside]
        mask[y0:y1, x0:x1][inside] = cls
    sigma = rng.uniform(0, 14)
    image = image + rng.normal(0, 1, image.shape).astype(np.float32) * sigma
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


def generate_shapes(split="train", num_examples=None, image_size=96, seed=0, max_objects=4):
    """Numpy arrays `(images uint8 [N, H, W, 3], masks uint8 [N, H, W])` of the shapes set."""
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {sorted(SPLITS)}; got {split!r}.")
    if num_examples is None:
        num_examples = DEFAULT_SIZES[split]
    h, w = _size(image_size)
    if h < 16 or w < 16 or num_examples < 1 or max_objects < 1:
        raise ValueError(
            "shapes: image_size must be >= 16 and num_examples, max_objects >= 1; got "
            f"{image_size}, {num_examples}, {max_objects}."
        )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = np.empty((num_examples, h, w, 3), np.uint8)
    masks = np.empty((num_examples, h, w), np.uint8)
    for i in range(num_examples):
        rng = np.random.default_rng([int(seed), SPLITS[split], i])
        images[i], masks[i] = _render(rng, yy, xx, max_objects)
    return images, masks


def shapes(split="train", num_examples=None, image_size=96, seed=0, max_objects=4):
    """The synthetic shapes source (5 classes; see the module docstring).

    Args:
        split: "train", "val" or "test" (disjoint seed streams).
        num_examples: default 512 for train, 128 for val / test.
        image_size: int or `(height, width)`.
        seed: base seed; the same arguments always give the same data.
        max_objects: objects per image are 1..max_objects.

    Example:
        >>> data = shapes("train", num_examples=8, image_size=64)
        >>> data.num_classes, data.class_names[1]
        (5, 'circle')
    """
    images, masks = generate_shapes(split, num_examples, image_size, seed, max_objects)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    return SegmentationData(
        dataset=dataset,
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        num_examples=len(images),
        name=f"shapes:{split}",
    )
