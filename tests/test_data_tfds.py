"""TFDS sources, offline with `tfds.testing.mock_data` (nothing is downloaded).

Needs tensorflow-datasets (the `[dev]` and `[tfds]` extras): skipped without it, except under
CI=true where its absence fails the module.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab.data import DataError, tfds_dataset, train_pipeline, validate

try:
    import tensorflow_datasets as tfds
except ImportError as error:
    _reason = f"tensorflow-datasets is not importable ({error}); pip install 'keras-deeplab[tfds]'"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{_reason}; CI must install it (dev extra).", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)


def pet_examples(self, *args, **kwargs):
    """Oxford-IIIT pet-like examples: trimap masks with values 1 (pet), 2 (bg), 3 (border)."""

    def generate():
        rng = np.random.default_rng(0)
        for k in range(5):
            h = 20 + k
            yield {
                "image": rng.integers(0, 255, (h, 30, 3)).astype(np.uint8),
                "segmentation_mask": rng.integers(1, 4, (h, 30, 1)).astype(np.uint8),
            }

    return tf.data.Dataset.from_generator(
        generate,
        output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8),
            "segmentation_mask": tf.TensorSpec([None, None, 1], tf.uint8),
        },
    )


def test_oxford_pet_trimap_maps_to_three_classes():
    with tfds.testing.mock_data(as_dataset_fn=pet_examples):
        data = tfds_dataset("oxford_iiit_pet", "train")
        raw = [ex["segmentation_mask"].numpy()[..., 0] for ex in pet_examples(None)]
        examples = [(i.numpy(), m.numpy()) for i, m in data.dataset]
        assert data.num_classes == 3 and data.class_names == ("pet", "background", "border")
        assert len(examples) == 5
        for (image, mask), trimap in zip(examples, raw, strict=True):
            assert image.dtype == np.uint8 and image.shape[2] == 3 and mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, trimap.astype(int) - 1)
        validate(data, progress=False)
        images, masks = next(iter(train_pipeline(data, 2, crop_size=16, seed=0)))
        assert images.shape == (2, 16, 16, 3) and masks.dtype == tf.int32


def test_tfds_bad_mask_values_are_reported():
    with tfds.testing.mock_data(num_examples=2):  # random masks 0..255
        data = tfds_dataset("oxford_iiit_pet", "train")
        with pytest.raises(DataError, match=r"(?s)2 of 2 examples are bad.*outside \[0, 3\)"):
            validate(data, progress=False)


def test_tfds_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"not prepared.*tfds build oxford_iiit_pet"):
        tfds_dataset("oxford_iiit_pet", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="not found. Check the name"):
        tfds_dataset("no_such_dataset_xyz", "train", num_classes=2)
    with pytest.raises(DataError, match="pass num_classes="):
        tfds_dataset("mnist", "train")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"keras-deeplab\[tfds\]"):
        tfds_dataset("oxford_iiit_pet", "train")
