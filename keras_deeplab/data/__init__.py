"""Segmentation data: sources (`SegmentationData`) and the DeepLab input pipelines.

Sources: `voc`, `cityscapes`, `ade20k`, `paired_folders` / `camvid`, `from_directory`
(layout detection), `tfds_dataset`, and the synthetic `shapes`. Pipelines:
`train_pipeline` (official augmentation) and `eval_pipeline` (padding to k * OS + 1).
Check files before training with `validate(data)`.
"""

from keras_deeplab.data.ade20k import ade20k
from keras_deeplab.data.augment import (
    eval_pipeline,
    padded_size,
    scale_factors,
    steps_per_epoch,
    train_pipeline,
)
from keras_deeplab.data.cityscapes import cityscapes
from keras_deeplab.data.contract import DataError, SegmentationData
from keras_deeplab.data.files import file_source
from keras_deeplab.data.folders import camvid, from_directory, load_data, paired_folders
from keras_deeplab.data.labels import label_lut
from keras_deeplab.data.palette import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    cityscapes_palette,
    colorize,
    colors_to_labels,
    overlay,
    voc_palette,
)
from keras_deeplab.data.shapes import generate_shapes, shapes
from keras_deeplab.data.tfds import tfds_dataset
from keras_deeplab.data.validation import validate
from keras_deeplab.data.voc import voc

__all__ = [
    "ADE20K_CLASSES",
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "DataError",
    "SegmentationData",
    "VOC_CLASSES",
    "ade20k",
    "camvid",
    "cityscapes",
    "cityscapes_palette",
    "colorize",
    "colors_to_labels",
    "eval_pipeline",
    "file_source",
    "from_directory",
    "generate_shapes",
    "label_lut",
    "load_data",
    "overlay",
    "padded_size",
    "paired_folders",
    "scale_factors",
    "shapes",
    "steps_per_epoch",
    "tfds_dataset",
    "train_pipeline",
    "validate",
    "voc",
    "voc_palette",
]
