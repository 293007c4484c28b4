"""Segmentation metrics from a streaming confusion matrix.

The official DeepLab evaluation (`tensorflow/models:research/deeplab/eval.py`) accumulates
`tf.metrics.mean_iou` over the whole split, with the ignore label's pixels at weight 0. We do
the same with an explicit confusion matrix `cm[true, predicted]` (int64, exact for any number
of pixels) and derive every score from it:

* IoU of class c: `cm[c, c] / (row_c + col_c - cm[c, c])`;
* mIoU: the mean over the classes that occur in the ground truth *or* in the predictions
  (classes absent from both have IoU NaN and are left out), the convention of
  `tf.metrics.mean_iou` and of the official numbers;
* pixel accuracy: `trace / total`; mean accuracy: the mean per-class recall over classes
  present in the ground truth;
* frequency-weighted IoU: `sum_c freq_c * IoU_c` with `freq_c = row_c / total`.

Three ways in, one formula (`scores_from_confusion`):

* `ConfusionMatrix`: NumPy, `update(labels, predictions)` per image (any sizes);
* `batch_confusion_matrix`: a TF function for one batch (works in `tf.function` and inside
  `strategy.run`; sum the per-replica results with `strategy.reduce(SUM, ...)`);
* `StreamingMeanIoU`: a Keras metric whose confusion-matrix variable is `ON_READ` with SUM
  aggregation, so it accumulates correctly under `MirroredStrategy` /
  `MultiWorkerMirroredStrategy` and in `model.evaluate`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.layers import PACKAGE


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    return int(num_classes)


def scores_from_confusion(confusion):
    """All scores of a confusion matrix `cm[true, predicted]`.

    Returns:
        dict with `miou`, `per_class_iou` (float64 [C], NaN for classes absent from both the
        ground truth and the predictions), `pixel_accuracy`, `mean_accuracy`, `fw_iou`,
        `num_pixels` and `confusion` (int64 [C, C]). On an empty matrix the scalar scores are
        NaN.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix; got shape {cm.shape}.")
    cm = np.rint(cm).astype(np.int64)
    true_pos = np.diag(cm).astype(np.float64)
    gt_count = cm.sum(axis=1).astype(np.float64)
    pred_count = cm.sum(axis=0).astype(np.float64)
    union = gt_count + pred_count - true_pos
    total = float(cm.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_pos / union, np.nan)
        recall = np.where(gt_count > 0, true_pos / gt_count, np.nan)
    present = ~np.isnan(iou)
    if total == 0:
        return {
            "miou": float("nan"),
            "per_class_iou": iou,
            "pixel_accuracy": float("nan"),
            "mean_accuracy": float("nan"),
            "fw_iou": float("nan"),
            "num_pixels": 0,
            "confusion": cm,
        }
    freq = gt_count / total
    return {
        "miou": float(iou[present].mean()),
        "per_class_iou": iou,
        "pixel_accuracy": float(true_pos.sum() / total),
        "mean_accuracy": float(np.nanmean(recall)),
        "fw_iou": float(np.sum(freq[gt_count > 0] * iou[gt_count > 0])),
        "num_pixels": int(total),
        "confusion": cm,
    }


class ConfusionMatrix:
    """Streaming confusion matrix (NumPy) for semantic segmentation.

    Args:
        num_classes: number of classes C; labels and predictions are in [0, C).
        ignore_label: ground-truth value whose pixels are not counted (255 for VOC /
            Cityscapes); None counts every pixel.

    Example:
        >>> cm = ConfusionMatrix(21)
        >>> for label, pred in zip(labels, preds):
        ...     cm.update(label, pred)
        >>> cm.result()["miou"]
    """

    def __init__(self, num_classes, ignore_label=255):
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def reset(self):
        self.confusion[...] = 0

    def update(self, labels, predictions):
        """Adds one image or a batch: `labels` and `predictions` of the same shape (ints)."""
        labels = np.asarray(labels)
        predictions = np.asarray(predictions)
        if labels.shape != predictions.shape:
            raise ValueError(
                f"labels {labels.shape} and predictions {predictions.shape} must have the same "
                "shape (take the argmax of logits first and resize predictions to the label size)."
            )
        labels = labels.reshape(-1).astype(np.int64)
        predictions = predictions.reshape(-1).astype(np.int64)
        if self.ignore_label is not None:
            keep = labels != self.ignore_label
            labels, predictions = labels[keep], predictions[keep]
        c = self.num_classes
        bad = (labels < 0) | (labels >= c)
        if bad.any():
            raise ValueError(
                f"ground-truth values {sorted(set(labels[bad].tolist()))[:10]} are outside "
                f"[0, {c}) and are not the ignore label ({self.ignore_label}); map them to the "
                "ignore label or fix num_classes."
            )
        bad = (predictions < 0) | (predictions >= c)
        if bad.any():
            raise ValueError(
                f"predicted values {sorted(set(predictions[bad].tolist()))[:10]} are outside "
                f"[0, {c}); the model has more classes than num_classes={c}."
            )
        self.confusion += np.bincount(labels * c + predictions, minlength=c * c).reshape(c, c)
        return self

    def update_confusion(self, confusion):
        """Adds an already computed [C, C] matrix (e.g. from `batch_confusion_matrix`)."""
        confusion = np.asarray(confusion)
        if confusion.shape != self.confusion.shape:
            raise ValueError(
                f"confusion has shape {confusion.shape}; expected {self.confusion.shape}."
            )
        self.confusion += np.rint(confusion).astype(np.int64)
        return self

    def merge(self, other):
        """Adds another `ConfusionMatrix` (e.g. from another process)."""
        return self.update_confusion(other.confusion)

    def result(self):
        """`scores_from_confusion` of the accumulated matrix."""
        return scores_from_confusion(self.confusion)


def batch_confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """Confusion matrix (int64 [C, C]) of one batch, in TF.

    Args:
        labels: integer tensor [..., H, W] of ground-truth ids (ignore_label allowed).
        predictions: integer class ids of the same shape as `labels`, or logits /
            probabilities with one more trailing axis of size C (arg-maxed here).
        num_classes: C.
        ignore_label: ground-truth value given weight 0; None to count every pixel.

    Works eagerly, in `tf.function` and per replica inside `strategy.run`; sum the
    replicas with `strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)`.
    """
    num_classes = _check_num_classes(num_classes)
    labels = tf.convert_to_tensor(labels)
    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape.rank is not None and predictions.shape.rank == labels.shape.rank + 1:
        predictions = tf.argmax(predictions, axis=-1)
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    if ignore_label is None:
        weights = tf.ones_like(labels)
    else:
        valid = tf.not_equal(labels, int(ignore_label))
        weights = tf.cast(valid, tf.int64)
        labels = tf.where(valid, labels, tf.zeros_like(labels))
    return tf.math.confusion_matrix(
        labels, predictions, num_classes=num_classes, weights=weights, dtype=tf.int64
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class StreamingMeanIoU(keras.metrics.Metric):
    """Keras metric: mIoU from a confusion matrix accumulated over the whole evaluation.

    `y_true` holds class ids ([B, H, W] or [B, H, W, 1], ignore_label allowed), `y_pred`
    logits/probabilities [B, H, W, C] or class ids [B, H, W]. The matrix is a float64
    variable (exact pixel counts up to 2**53) with `ON_READ` synchronization and SUM
    aggregation, so replicas of a distribution strategy are summed when it is read.
    `result()` is the mIoU over classes present in the ground truth or the predictions;
    `scores()` gives every score of `scores_from_confusion`.

    Args:
        num_classes: number of classes C.
        ignore_label: ground-truth value not counted (None: count all).
        name: metric name (default `"mean_iou"`).

    Example:
        `model.compile(..., metrics=[StreamingMeanIoU(21)])`
    """

    def __init__(self, num_classes, ignore_label=255, name="mean_iou", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float64",
            aggregation="sum",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("StreamingMeanIoU does not take sample_weight; use ignore_label.")
        y_true = tf.convert_to_tensor(y_true)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == 4 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, -1)
        cm = batch_confusion_matrix(y_true, y_pred, self.num_classes, self.ignore_label)
        self.confusion.assign_add(tf.cast(cm, tf.float64))

    def _iou(self):
        cm = tf.convert_to_tensor(self.confusion)
        true_pos = tf.linalg.diag_part(cm)
        union = tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1) - true_pos
        present = union > 0
        iou = tf.math.divide_no_nan(true_pos, union)
        return iou, present

    def result(self):
        iou, present = self._iou()
        count = tf.reduce_sum(tf.cast(present, tf.float64))
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(iou), count), tf.float32)

    def scores(self):
        """Every score (`scores_from_confusion`) of the accumulated matrix, as Python/NumPy."""
        return scores_from_confusion(np.asarray(keras.ops.convert_to_numpy(self.confusion)))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
        }
