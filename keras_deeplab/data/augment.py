"""Training and evaluation input pipelines (official `research/deeplab/input_preprocess.py`).

Training (`preprocess_image_and_label` with `is_training=True`): random scale picked from
`{min, min + step, ..., max}` (uniform in `[min, max)` when `scale_step=0`), image resized
bilinearly and mask by nearest neighbour (both `align_corners=True`, new size
`int(size * scale)`), padding at the bottom/right to at least the crop size with the mean
pixel (127.5) / the ignore label, a random crop and a left-right flip with probability 0.5.
Optionally (not in the official pipeline), first a turn by a random multiple of 90 degrees, for
data without an up direction (aerial, microscopy, the synthetic `shapes`).

Evaluation: no augmentation; each image is padded at the bottom/right to the smallest
`k * output_stride + 1` covering it (mean pixel / ignore label), batches pad to their largest
example (still of that form).

Determinism and resume: with a `seed`, `train_pipeline` is a pure function of `(data, seed)`:
the example order comes from `shuffle(seed)` and each example's augmentation from a seeded
random stream indexed by its position in the epoch. A trainer builds one pipeline per epoch
with an epoch-dependent seed (e.g. `seed=base_seed + epoch`) and resumes mid-epoch with
`skip_batches=step_in_epoch`: the remaining batches are identical to an uninterrupted run,
and the skipped examples are not decoded. Iterating the same dataset again (e.g. Keras
`fit(epochs=N)` on one pipeline) reshuffles and redraws augmentations, deterministically.
"""

import secrets

import numpy as np
import tensorflow as tf

MEAN_PIXEL = 127.5


def _pair(size, what):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what} must be a positive int or (height, width); got {size!r}.")
    return size


def scale_factors(min_scale=0.5, max_scale=2.0, scale_step=0.25):
    """The discrete scales of the official augmentation (None when `scale_step == 0`)."""
    if min_scale <= 0 or min_scale > max_scale:
        raise ValueError(
            f"need 0 < min_scale <= max_scale; got min_scale={min_scale}, max_scale={max_scale}."
        )
    if scale_step < 0:
        raise ValueError(f"scale_step must be >= 0; got {scale_step}.")
    if min_scale == max_scale:
        return np.array([min_scale], np.float32)
    if scale_step == 0:
        return None
    steps = int(round((max_scale - min_scale) / scale_step)) + 1
    return np.linspace(min_scale, max_scale, steps).astype(np.float32)


def _pad_to(image, mask, height, width, mean_pixel, ignore_label):
    """Pad bottom/right to at least `(height, width)`."""
    shape = tf.shape(image)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=mean_pixel)
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
    return image, mask


def augment(
    image,
    mask,
    seed,
    crop_size,
    scales,
    min_scale,
    max_scale,
    flip,
    ignore_label,
    mean_pixel=MEAN_PIXEL,
    rotate90=False,
):
    """One training example: (with `rotate90`, a turn by a random multiple of 90 degrees,)
    scale, pad, crop, flip. `seed` is a stateless seed `[2]` int."""
    crop_h, crop_w = crop_size
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if rotate90:  # first, on the source pixels; its own stream keeps the other draws
        turns = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, 4), 0, 4, dtype=tf.int32
        )
        image = tf.image.rot90(image, turns)
        mask = tf.image.rot90(mask[..., None], turns)[..., 0]
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask, tf.int32)
    if scales is None:
        scale = tf.random.stateless_uniform([], seeds[0], min_scale, max_scale)
    elif len(scales) == 1:
        scale = tf.constant(float(scales[0]))
    else:
        index = tf.random.stateless_uniform(
            [], seeds[0], minval=0, maxval=len(scales), dtype=tf.int32
        )
        scale = tf.gather(tf.constant(scales), index)
    if scales is None or len(scales) > 1 or float(scales[0]) != 1.0:
        size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
        size = tf.maximum(size, 1)
        image = tf.raw_ops.ResizeBilinear(
            images=image[None], size=size, align_corners=True, half_pixel_centers=False
        )[0]
        mask = tf.raw_ops.ResizeNearestNeighbor(
            images=mask[None, :, :, None], size=size, align_corners=True, half_pixel_centers=False
        )[0, :, :, 0]
    image, mask = _pad_to(image, mask, crop_h, crop_w, mean_pixel, ignore_label)
    shape = tf.shape(image)
    top = tf.random.stateless_uniform(
        [], seeds[1], minval=0, maxval=shape[0] - crop_h + 1, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [], seeds[2], minval=0, maxval=shape[1] - crop_w + 1, dtype=tf.int32
    )
    image = image[top : top + crop_h, left : left + crop_w]
    mask = mask[top : top + crop_h, left : left + crop_w]
    if flip:
        flipped = tf.random.stateless_uniform([], seeds[3]) <= 0.5
        image = tf.cond(flipped, lambda: tf.reverse(image, [1]), lambda: image)
        mask = tf.cond(flipped, lambda: tf.reverse(mask, [1]), lambda: mask)
    image = tf.ensure_shape(image, [crop_h, crop_w, 3])
    mask = tf.ensure_shape(mask, [crop_h, crop_w])
    return image, mask


def _source(data):
    """`(dataset, decode)`: undecoded records when the source has them."""
    if data.records is not None:
        return data.records, data.decode
    return data.dataset, None


def train_pipeline(
    data,
    batch_size,
    crop_size=513,
    min_scale=0.5,
    max_scale=2.0,
    scale_step=0.25,
    flip=True,
    seed=None,
    *,
    rotate90=False,
    shuffle=True,
    shuffle_buffer=None,
    skip_batches=0,
    drop_remainder=True,
    mean_pixel=MEAN_PIXEL,
    shard=None,
):
    """Batched training dataset with the official DeepLab augmentation (one epoch).

    Args:
        data: a `SegmentationData`.
        batch_size: examples per batch.
        crop_size: int or `(height, width)` of the random crop (513 default).
        min_scale, max_scale, scale_step: random scale set (official 0.5, 2.0, 0.25;
            `scale_step=0` samples uniformly, `min_scale == max_scale == 1` disables scaling).
        flip: random left-right flip with probability 0.5.
        seed: int for a deterministic pipeline (see the module docstring); None draws one.
        shuffle: shuffle the examples (file sources shuffle all paths; in-memory and TFDS
            sources use a buffer of `shuffle_buffer`, default min(num_examples, 1024)).
        rotate90: turn each image by 0, 90, 180 or 270 degrees at random before scaling,
            padding and cropping (for data without an up direction; not in the official
            pipeline).
        skip_batches: batches to skip at the start (resume inside an epoch).
        drop_remainder: drop the last incomplete batch (static batch shape).
        mean_pixel: image padding value.
        shard: `(num_shards, index)`: only this shard's `batch_size // num_shards` examples
            of each global batch, chosen before decoding (tf.distribute input pipelines, one
            per worker or replica; see `training.trainer`). The shards of one seed together
            hold exactly the examples, augmentations included, of the unsharded pipeline.

    Returns:
        `tf.data.Dataset` of `(images float32 [B, h, w, 3] in 0..255, masks int32 [B, h, w])`
        with mask values in `[0, num_classes)` or `data.ignore_label`.

    Example:
        >>> from keras_deeplab.data import shapes
        >>> ds = train_pipeline(shapes(num_examples=8, image_size=64), 4, crop_size=48, seed=0)
        >>> [tuple(t.shape) for t in next(iter(ds))]
        [(4, 48, 48, 3), (4, 48, 48)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    num_shards, shard_index = _shard(shard, batch_size)
    crop_size = _pair(crop_size, "crop_size")
    scales = scale_factors(min_scale, max_scale, scale_step)
    if seed is None:
        seed = secrets.randbits(31)
    seed = int(seed)
    dataset, decode = _source(data)
    if shuffle:
        if data.files is not None:  # path records: shuffle them all
            buffer = len(data.files)
        else:
            buffer = shuffle_buffer or min(data.num_examples or 1024, 1024)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    randoms = tf.data.Dataset.random(seed=seed ^ 0x5EED, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((dataset, randoms))
    if skip_batches:
        dataset = dataset.skip(int(skip_batches) * batch_size)
    ignore_label = data.ignore_label
    per_shard = batch_size // num_shards
    if num_shards > 1:  # before `prepare`: a shard decodes only its own examples
        dataset = (
            dataset.enumerate()
            .filter(lambda i, _: (i % batch_size) // per_shard == shard_index)
            .map(lambda _, example: example)
        )

    def prepare(example, random):
        image, mask = decode(*example) if decode is not None else example
        stateless_seed = tf.stack([random, tf.bitwise.right_shift(random, 32)])
        return augment(
            image,
            mask,
            stateless_seed,
            crop_size,
            scales,
            min_scale,
            max_scale,
            flip,
            ignore_label,
            mean_pixel,
            rotate90,
        )

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(per_shard, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _shard(shard, batch_size):
    """`(num_shards, index)` of `train_pipeline(shard=...)`, checked; (1, 0) for None."""
    if shard is None:
        return 1, 0
    try:
        num_shards, index = (int(s) for s in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (num_shards, index); got {shard!r}.") from None
    if num_shards < 1 or not 0 <= index < num_shards or batch_size % num_shards:
        raise ValueError(
            f"shard={tuple(shard)}: need 0 <= index < num_shards and batch_size ({batch_size}) "
            "divisible by num_shards."
        )
    return num_shards, index


def steps_per_epoch(data, batch_size, drop_remainder=True):
    """Batches in one `train_pipeline` epoch (None when `data.num_examples` is unknown)."""
    if data.num_examples is None:
        return None
    if drop_remainder:
        return data.num_examples // batch_size
    return -(-data.num_examples // batch_size)


def padded_size(size, output_stride):
    """Smallest `k * output_stride + 1 >= size` (ints or int tensors): the official eval crop rule.

    Example:
        >>> padded_size(375, 16)
        385
    """
    return (size - 1 + output_stride - 1) // output_stride * output_stride + 1


def pad_to_grid(images, output_stride, value=MEAN_PIXEL):
    """Float32 numpy `images` (`[H, W, C]` or `[B, H, W, C]`) padded bottom/right with `value` to
    `padded_size` of their height and width: the official eval input (crop the output back).

    Example:
        >>> pad_to_grid(np.zeros((96, 96, 3)), 16).shape
        (97, 97, 3)
    """
    images = np.asarray(images, np.float32)
    h, w = images.shape[-3:-1]
    padding = [(0, 0)] * images.ndim
    padding[-3] = (0, padded_size(h, output_stride) - h)
    padding[-2] = (0, padded_size(w, output_stride) - w)
    return np.pad(images, padding, constant_values=value)


def eval_pipeline(
    data,
    batch_size=1,
    output_stride=16,
    *,
    pad_to=None,
    mean_pixel=MEAN_PIXEL,
    return_sizes=False,
):
    """Batched evaluation dataset: no augmentation, padding to `k * output_stride + 1`.

    Args:
        data: a `SegmentationData`.
        batch_size: examples per batch (1 default; larger batches pad to their largest example).
        output_stride: padding multiple (`None` pads only to the batch maximum).
        pad_to: optional fixed `(height, width)` (or int) to pad every image to, as the
            official eval crop size (e.g. 513 for VOC); must cover every image.
        mean_pixel: image padding value (the mask pads with `data.ignore_label`).
        return_sizes: also yield the original `(height, width)` int32 `[B, 2]` of each example
            (crop predictions with `pred[:h, :w]`).

    Returns:
        `tf.data.Dataset` of `(images float32 [B, H, W, 3], masks int32 [B, H, W])`
        (`+ sizes` with `return_sizes`); padded pixels are ignore in the mask.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if output_stride is not None and int(output_stride) < 1:
        raise ValueError(f"output_stride must be a positive int or None; got {output_stride}.")
    target = None if pad_to is None else _pair(pad_to, "pad_to")
    ignore_label = data.ignore_label

    def pad(image, mask):
        size = tf.shape(image)[:2]
        if target is not None:
            tf.debugging.assert_less_equal(
                size,
                tf.constant(target),
                message=f"{data.name}: an image is larger than pad_to={target}; raise pad_to.",
            )
            height, width = target
        elif output_stride is not None:
            height = padded_size(size[0], int(output_stride))
            width = padded_size(size[1], int(output_stride))
        else:
            height, width = size[0], size[1]
        image, mask = _pad_to(
            tf.cast(image, tf.float32),
            tf.cast(mask, tf.int32),
            height,
            width,
            mean_pixel,
            ignore_label,
        )
        return image, mask, size

    dataset = data.dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.padded_batch(
        batch_size,
        padded_shapes=([None, None, 3], [None, None], [2]),
        padding_values=(
            tf.constant(mean_pixel, tf.float32),
            tf.constant(ignore_label, tf.int32),
            tf.constant(0, tf.int32),
        ),
    )
    if not return_sizes:
        dataset = dataset.map(lambda image, mask, size: (image, mask))
    return dataset.prefetch(tf.data.AUTOTUNE)
