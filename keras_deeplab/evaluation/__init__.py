"""Evaluation: streaming segmentation metrics and the `Segmenter` inference API."""

from keras_deeplab.evaluation.metrics import (
    ConfusionMatrix,
    StreamingMeanIoU,
    batch_confusion_matrix,
    scores_from_confusion,
)
from keras_deeplab.evaluation.segmenter import (
    OFFICIAL_EVAL_SCALES,
    Segmenter,
    padded_size,
)

__all__ = [
    "OFFICIAL_EVAL_SCALES",
    "ConfusionMatrix",
    "Segmenter",
    "StreamingMeanIoU",
    "batch_confusion_matrix",
    "padded_size",
    "scores_from_confusion",
]
