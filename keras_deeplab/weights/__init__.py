"""Weights: official TFLite and TF-checkpoint converters, ImageNet backbones, loading.

* `loading`: `load_weights` (files and presets, matched by layer name), `weights_num_classes`;
* `presets`: the named presets and `resolve_weights` (a name or path -> a local file);
* `weights_file`: reading `.weights.h5` / `.keras` files by layer name;
* `tflite`, `checkpoint`: the official TFLite / TF1-checkpoint converters;
* `imagenet`: ImageNet backbone weights (`backbone_weights=`).
"""

from keras_deeplab.weights.checkpoint import convert_tf_checkpoint, load_tf_checkpoint
from keras_deeplab.weights.imagenet import load_backbone_weights
from keras_deeplab.weights.loading import (
    ClassCountMismatchError,
    load_weights,
    weights_num_classes,
)
from keras_deeplab.weights.presets import list_presets, resolve_weights
from keras_deeplab.weights.tflite import convert_tflite, inspect_tflite, load_tflite

__all__ = [
    "ClassCountMismatchError",
    "convert_tf_checkpoint",
    "convert_tflite",
    "inspect_tflite",
    "list_presets",
    "load_backbone_weights",
    "load_tf_checkpoint",
    "load_tflite",
    "load_weights",
    "resolve_weights",
    "weights_num_classes",
]
