"""`train_pipeline` / `eval_pipeline`: alignment, padding, scales, determinism, resume."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_pairs

from keras_deeplab.data import (
    SegmentationData,
    eval_pipeline,
    padded_size,
    paired_folders,
    scale_factors,
    shapes,
    steps_per_epoch,
    train_pipeline,
)


def block_data(sizes, seed=0, block=12):
    """Images whose mask is derivable from the pixels: mask = (R > 127), big flat blocks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for h, w in sizes:
        bits = rng.integers(0, 2, (h // block + 1, w // block + 1))
        mask = np.kron(bits, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        image[..., 0] = np.where(mask == 1, 255, 0)
        images.append(image)
        masks.append(mask)
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(images, masks, strict=True),
        output_signature=(
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([None, None], tf.uint8),
        ),
    )
    return SegmentationData(dataset=dataset, num_classes=2, num_examples=len(sizes), name="blocks")


def interior(mask, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood has one label and no ignore."""
    padded = np.pad(mask, radius, mode="edge")
    h, w = mask.shape
    windows = [
        padded[dy : dy + h, dx : dx + w]
        for dy in range(2 * radius + 1)
        for dx in range(2 * radius + 1)
    ]
    lo, hi = np.min(windows, axis=0), np.max(windows, axis=0)
    return (lo == hi) & (mask != 255)


def test_augmentation_keeps_image_mask_alignment():
    data = block_data([(61, 83), (90, 47), (33, 33), (120, 100)] * 4)
    checked = 0
    for images, masks in train_pipeline(data, 4, crop_size=65, seed=7):
        images, masks = images.numpy(), masks.numpy()
        assert images.dtype == np.float32 and masks.dtype == np.int32
        assert images.shape == (4, 65, 65, 3) and masks.shape == (4, 65, 65)
        for image, mask in zip(images, masks, strict=True):
            assert set(np.unique(mask)) <= {0, 1, 255}
            inside = interior(mask)
            derived = (image[..., 0] > 127).astype(np.int32)
            np.testing.assert_array_equal(derived[inside], mask[inside])
            checked += inside.sum()
            pad = mask == 255  # padding: mean pixel in every channel
            np.testing.assert_array_equal(image[pad], 127.5)
    assert checked > 30_000


def test_padding_bottom_right_with_mean_and_ignore():
    data = block_data([(20, 30)])
    original_image, original_mask = next(iter(data.dataset))
    ds = train_pipeline(
        data, 1, crop_size=(33, 41), min_scale=1.0, max_scale=1.0, flip=False, seed=0
    )
    image, mask = (t.numpy()[0] for t in next(iter(ds)))
    np.testing.assert_array_equal(image[:20, :30], original_image.numpy())
    np.testing.assert_array_equal(mask[:20, :30], original_mask.numpy())
    assert (image[20:] == 127.5).all() and (image[:, 30:] == 127.5).all()
    assert (mask[20:] == 255).all() and (mask[:, 30:] == 255).all()


def test_scales_are_the_official_set():
    np.testing.assert_allclose(scale_factors(), [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    assert scale_factors(1.0, 1.0, 0.25).tolist() == [1.0]
    assert scale_factors(0.5, 1.5, 0) is None
    with pytest.raises(ValueError, match="min_scale"):
        scale_factors(2.0, 1.0)
    # A 40x40 image scaled by s and cropped at 81 (>= 2 * 40): the unpadded part is int(40 s)^2.
    data = block_data([(40, 40)] * 64)
    sides = set()
    for _, masks in train_pipeline(data, 8, crop_size=81, seed=3):
        for mask in masks.numpy():
            side = int(round(np.sqrt((mask != 255).sum())))
            assert (mask != 255).sum() == side * side
            sides.add(side)
    assert sides == {20, 30, 40, 50, 60, 70, 80}


def test_flip_happens_about_half_the_time():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4, 0] = 255  # left half red
    data = SegmentationData(
        dataset=tf.data.Dataset.from_tensors((image, np.zeros((8, 8), np.uint8))).repeat(200),
        num_classes=2,
        num_examples=200,
    )
    ds = train_pipeline(data, 200, crop_size=8, min_scale=1.0, max_scale=1.0, seed=5)
    images = next(iter(ds))[0].numpy()
    flipped = (images[:, :, 4:, 0] == 255).all(axis=(1, 2))
    assert 70 < flipped.sum() < 130
    assert (flipped | (images[:, :, :4, 0] == 255).all(axis=(1, 2))).all()


def test_rotate90_turns_image_and_mask_together_and_keeps_the_other_draws():
    # a red L with arms of unequal length: its 4 turns and its 4 mirror images all differ
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :6] = 1
    mask[:5, :2] = 1
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = mask * 255
    data = SegmentationData(
        dataset=tf.data.Dataset.from_tensors((image, mask)).repeat(200),
        num_classes=2,
        num_examples=200,
    )
    kwargs = dict(crop_size=8, min_scale=1.0, max_scale=1.0, seed=5, shuffle=False)
    images, turned = (
        t.numpy() for t in next(iter(train_pipeline(data, 200, rotate90=True, **kwargs)))
    )
    np.testing.assert_array_equal(images[..., 0] == 255, turned == 1)
    flipped = next(iter(train_pipeline(data, 200, **kwargs)))[1].numpy()
    turns = []
    for after, before in zip(turned, flipped, strict=True):  # the same flip, then k turns
        (k,) = [k for k in range(4) if np.array_equal(np.rot90(before, k), after)]
        turns.append(k)
    assert min(np.bincount(turns, minlength=4)) > 25  # each turn about 50 times


def test_rotate90_turns_the_image_before_padding():
    # a 6x10 image turned is 6x10 or 10x6, padded at the bottom/right to the 10x10 crop
    data = block_data([(6, 10)] * 64)
    kwargs = dict(crop_size=10, min_scale=1.0, max_scale=1.0, flip=False, seed=2)
    shapes_seen = set()
    for _, masks in train_pipeline(data, 16, rotate90=True, **kwargs):
        for mask in masks.numpy():
            rows, cols = np.nonzero(mask != 255)
            assert rows.min() == 0 and cols.min() == 0  # the padding stays bottom/right
            shapes_seen.add((rows.max() + 1, cols.max() + 1))
            assert (mask != 255).sum() == 60
    assert shapes_seen == {(6, 10), (10, 6)}


def batches(ds):
    return [(a.numpy(), b.numpy()) for a, b in ds]


def test_seeded_pipeline_is_deterministic_and_resumable():
    data = shapes("train", num_examples=24, image_size=40)
    one = batches(train_pipeline(data, 4, crop_size=33, seed=11))
    two = batches(train_pipeline(data, 4, crop_size=33, seed=11))
    other = batches(train_pipeline(data, 4, crop_size=33, seed=12))
    assert len(one) == 6 == steps_per_epoch(data, 4)
    for (a, b), (c, d) in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not np.array_equal(one[0][0], other[0][0])
    resumed = batches(train_pipeline(data, 4, crop_size=33, seed=11, skip_batches=4))
    assert len(resumed) == 2
    for (a, b), (c, d) in zip(one[4:], resumed, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # iterating the same pipeline again: a new order / augmentation
    ds = train_pipeline(data, 4, crop_size=33, seed=11)
    epoch0, epoch1 = batches(ds), batches(ds)
    np.testing.assert_array_equal(epoch0[0][0], one[0][0])
    assert not np.array_equal(epoch0[0][0], epoch1[0][0])


def test_file_source_pipeline_resume_skips_decoding(tmp_path):
    """File sources shuffle path records: resumed batches equal the uninterrupted ones."""
    images, masks = make_pairs(tmp_path, count=6, size=(20, 24))
    data = paired_folders(images, masks, 3)
    full = batches(train_pipeline(data, 2, crop_size=17, seed=4))
    resumed = batches(train_pipeline(data, 2, crop_size=17, seed=4, skip_batches=1))
    assert len(full) == 3 and len(resumed) == 2
    np.testing.assert_array_equal(full[1][1], resumed[0][1])
    np.testing.assert_array_equal(full[2][0], resumed[1][0])


@pytest.mark.parametrize("output_stride", [8, 16])
def test_eval_pads_to_k_os_plus_one(output_stride):
    sizes = [(33, 33), (34, 50), (17, 65), (1, 2)]
    data = block_data(sizes)
    ds = eval_pipeline(data, output_stride=output_stride, return_sizes=True)
    for (h, w), (images, masks, size) in zip(sizes, ds, strict=True):
        expected = (padded_size(h, output_stride), padded_size(w, output_stride))
        assert images.shape[1:3] == expected == masks.shape[1:3]
        assert (expected[0] - 1) % output_stride == 0 and expected[0] >= h
        assert expected[0] - output_stride < h  # smallest such size
        assert size.numpy().tolist() == [[h, w]]
        assert (images.numpy()[0, h:] == 127.5).all() and (masks.numpy()[0, :, w:] == 255).all()
        assert (masks.numpy()[0, :h, :w] != 255).all()
    assert padded_size(33, 16) == 33 and padded_size(34, 16) == 49 and padded_size(513, 16) == 513


def test_eval_batches_pad_to_batch_max():
    data = block_data([(20, 40), (45, 10), (16, 16)])
    images, masks = next(iter(eval_pipeline(data, batch_size=3, output_stride=16)))
    assert images.shape == (3, 49, 49, 3) and masks.shape == (3, 49, 49)
    assert images.dtype == tf.float32 and masks.dtype == tf.int32
    assert (masks.numpy()[2, 17:] == 255).all() and (images.numpy()[2, :, 17:] == 127.5).all()
    fixed = next(iter(eval_pipeline(data, batch_size=3, pad_to=65)))
    assert fixed[0].shape == (3, 65, 65, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than pad_to"):
        list(eval_pipeline(data, pad_to=33))


def test_train_pipeline_shards_partition_every_global_batch():
    """Sharded pipelines (chosen before decoding) hold the unsharded batches' examples."""
    from keras_deeplab.data import shapes
    from keras_deeplab.data.augment import train_pipeline

    data = shapes(num_examples=12, image_size=40)
    whole = [b for b in train_pipeline(data, 4, crop_size=32, seed=3)]
    parts = [list(train_pipeline(data, 4, crop_size=32, seed=3, shard=(2, i))) for i in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for batch, first, second in zip(whole, *parts, strict=True):
        assert first[0].shape[0] == second[0].shape[0] == 2
        np.testing.assert_array_equal(batch[0], np.concatenate([first[0], second[0]]))
        np.testing.assert_array_equal(batch[1], np.concatenate([first[1], second[1]]))
    with pytest.raises(ValueError, match="divisible by num_shards"):
        train_pipeline(data, 3, crop_size=32, shard=(2, 0))
