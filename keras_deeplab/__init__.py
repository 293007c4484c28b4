"""keras_deeplab: the DeepLab family (v1, v2, v3, v3+) as Keras 3 models.

Faithful to the official TensorFlow implementation (`tensorflow/models`
`research/deeplab`) and to the authors' Caffe nets for v1/v2.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_deeplab.backbones import get_backbone, list_backbones  # noqa: E402
from keras_deeplab.evaluation import ConfusionMatrix, Segmenter  # noqa: E402
from keras_deeplab.macs import count_macs, count_params  # noqa: E402
from keras_deeplab.models import (  # noqa: E402
    DeepLabV1,
    DeepLabV2,
    DeepLabV3,
    DeepLabV3Plus,
    create_model,
    list_models,
)
from keras_deeplab.msc import MultiScaleInputs  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfusionMatrix",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MultiScaleInputs",
    "Segmenter",
    "count_macs",
    "count_params",
    "create_model",
    "get_backbone",
    "list_backbones",
    "list_models",
]
