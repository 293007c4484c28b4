"""Weights: official TFLite and TF-checkpoint converters, ImageNet backbones, loading."""

from keras_deeplab.weights.checkpoint import load_tf_checkpoint
from keras_deeplab.weights.imagenet import load_backbone_weights
from keras_deeplab.weights.loading import (
    ClassCountMismatchError,
    load_weights,
    resolve_weights,
    weights_num_classes,
)
from keras_deeplab.weights.tflite import inspect_tflite, load_tflite

__all__ = [
    "ClassCountMismatchError",
    "inspect_tflite",
    "load_backbone_weights",
    "load_tf_checkpoint",
    "load_tflite",
    "load_weights",
    "resolve_weights",
    "weights_num_classes",
]
