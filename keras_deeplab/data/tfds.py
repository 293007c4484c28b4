"""TensorFlow Datasets (TFDS) sources with a segmentation-mask image feature.

`tfds_dataset(name, split)` loads an already prepared TFDS dataset (`download=False` by
default: nothing is fetched unless asked) and maps it to the `SegmentationData` contract.
Known conventions are applied automatically:

* `oxford_iiit_pet`: trimap mask values 1 (pet), 2 (background), 3 (border) -> 0, 1, 2.
* `cityscapes`: `image_left` + `segmentation_label` (label ids) -> the 19 train ids.

Other datasets need `num_classes=` (and `label_map=` / `mask_threshold=` as for folders).
`tensorflow-datasets` is imported lazily (install with `pip install keras-deeplab[tfds]`).
"""

import numpy as np
import tensorflow as tf

from keras_deeplab.data.cityscapes import cityscapes_lut
from keras_deeplab.data.contract import DataError, SegmentationData
from keras_deeplab.data.labels import label_lut
from keras_deeplab.data.palette import CITYSCAPES_CLASSES

MASK_KEYS = ("segmentation_mask", "segmentation_label", "segmentation", "mask", "annotation")
IMAGE_KEYS = ("image", "image_left")

PRESETS = {
    "oxford_iiit_pet": {
        "num_classes": 3,
        "label_map": {1: 0, 2: 1, 3: 2},
        "class_names": ("pet", "background", "border"),
    },
    "cityscapes": {
        "num_classes": 19,
        "base_lut": cityscapes_lut(),
        "class_names": CITYSCAPES_CLASSES,
    },
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "tfds_dataset needs tensorflow-datasets: pip install 'keras-deeplab[tfds]' "
            "(tensorflow-datasets and importlib_resources)."
        ) from error
    return tfds


def _pick(features, wanted, candidates, what, name):
    if wanted is not None:
        if wanted not in features:
            raise DataError(
                f"tfds {name}: no feature {wanted!r}; features: {', '.join(sorted(features))}."
            )
        return wanted
    for key in candidates:
        if key in features:
            return key
    raise DataError(
        f"tfds {name}: cannot find the {what} feature (tried {', '.join(candidates)}); "
        f"pass {what}_key= (features: {', '.join(sorted(features))})."
    )


def tfds_dataset(
    name,
    split="train",
    data_dir=None,
    image_key=None,
    mask_key=None,
    num_classes=None,
    label_map=None,
    *,
    mask_threshold=None,
    class_names=None,
    ignore_label=255,
    mask_channel=None,
    download=False,
):
    """A TFDS dataset as `SegmentationData`.

    Args:
        name: TFDS name, e.g. "oxford_iiit_pet" or "cityscapes/semantic_segmentation".
        split: TFDS split string ("train", "test", "train[:80%]", ...).
        data_dir: TFDS data folder (default: TFDS' own, ~/tensorflow_datasets).
        image_key: image feature (auto: "image", "image_left").
        mask_key: mask feature (auto: "segmentation_mask", "segmentation_label",
            "segmentation", "mask", "annotation").
        num_classes: number of classes (known datasets: preset).
        label_map: dict `{raw: label}` or 256 labels (replaces the preset mapping).
        mask_threshold: binary masks: raw `v > mask_threshold` -> 1, else 0.
        class_names: names of the classes.
        ignore_label: ignore label (255).
        mask_channel: channel of a multi-channel mask feature to use.
        download: let TFDS download and prepare the dataset when missing.

    Example:
        >>> data = tfds_dataset("oxford_iiit_pet", "train")  # doctest: +SKIP
    """
    tfds = _import_tfds()
    base_name = name.split("/")[0].split(":")[0]
    preset = PRESETS.get(base_name, {})
    custom_map = label_map is not None or mask_threshold is not None
    if num_classes is None:
        num_classes = preset.get("num_classes")
        if class_names is not None:
            num_classes = len(class_names)
    if num_classes is None:
        raise DataError(
            f"tfds {name}: pass num_classes= (and label_map= when the mask values are not "
            f"0..num_classes-1); presets exist for {', '.join(sorted(PRESETS))}."
        )
    if class_names is None and num_classes == preset.get("num_classes"):
        class_names = preset.get("class_names")
    if label_map is None and not custom_map:
        label_map = preset.get("label_map")
    base = None if custom_map else preset.get("base_lut")
    lut = label_lut(label_map, mask_threshold, base=base)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as error:  # DatasetNotFoundError lists every dataset: keep line 1
        first_line = str(error).strip().splitlines()[0]
        raise DataError(
            f"tfds {name}: {first_line} Check the name with tfds.list_builders()."
        ) from None
    try:
        if download:
            builder.download_and_prepare()
        raw = builder.as_dataset(split=split, shuffle_files=False)
    except (AssertionError, FileNotFoundError) as error:
        raise DataError(
            f"tfds {name}: dataset not prepared in {data_dir or 'the TFDS data dir'} ({error}). "
            f"Fix: run `tfds build {name}` (or pass download=True, or data_dir=...)."
        ) from error
    features = builder.info.features
    image_key = _pick(features, image_key, IMAGE_KEYS, "image", name)
    mask_key = _pick(features, mask_key, MASK_KEYS, "mask", name)
    mask_shape = features[mask_key].shape
    mask_channels = mask_shape[-1] if len(mask_shape) == 3 else 1
    if mask_channels not in (1, None) and mask_channel is None:
        raise DataError(
            f"tfds {name}: mask feature {mask_key!r} has {mask_channels} channels; pass "
            "mask_channel= (the channel holding the class index)."
        )
    try:
        num_examples = int(builder.info.splits[split].num_examples) or None
    except Exception:  # unknown split info (e.g. mocked metadata)
        num_examples = None

    num_classes = int(num_classes)
    message = (
        f"tfds {name} [{split}]: mask values outside [0, {num_classes}) and not {ignore_label} "
        "after the label map (fix: pass num_classes= / label_map= / mask_threshold=)"
    )
    lut_tensor = tf.constant(lut)

    def decode(image, mask):
        if image.shape.rank == 2:
            image = image[..., None]
        channels = tf.shape(image)[-1]
        image = tf.cond(
            tf.equal(channels, 1),
            lambda: tf.image.grayscale_to_rgb(image[..., :1]),
            lambda: image[..., :3],
        )
        image = tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])
        if mask.shape.rank == 3:
            mask = mask[..., mask_channel or 0]
        mask = tf.cast(mask, tf.int32)
        tf.debugging.assert_less(
            tf.reduce_max(mask), 256, message=f"tfds {name}: mask values >= 256 (labels are 0..255)"
        )
        mask = tf.gather(lut_tensor, tf.maximum(mask, 0))
        bad = tf.logical_and(mask >= num_classes, mask != ignore_label)
        tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [message, "bad values:", tf.unique(tf.boolean_mask(mask, bad))[0]],
            summarize=10,
        )
        return image, tf.ensure_shape(mask, [None, None])

    records = raw.map(lambda example: (example[image_key], example[mask_key]))
    return SegmentationData.from_records(
        records,
        decode,
        num_classes=num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        num_examples=num_examples,
        name=f"tfds:{name}:{split}",
        label_lut=np.asarray(lut),
    )
