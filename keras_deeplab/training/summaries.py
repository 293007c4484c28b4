"""TensorBoard helpers: prediction overlays (VOC palette of `keras_deeplab.data`) and
a summary writer.

Summaries are written with the core `tf.summary.write` op and TensorBoard's
scalar/image plugin metadata, so no `tensorboard` package is needed to *write*
them (viewing needs `pip install tensorboard`).
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_deeplab.data.palette import overlay


def _metadata(plugin, data_class):
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    metadata.data_class = data_class
    return metadata


SCALAR_METADATA = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
IMAGE_METADATA = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def overlay_grid(images, labels, predictions, ignore_label=255, alpha=0.5):
    """`[N, H, 3W, 3]` uint8 panels: image | ground truth over image | prediction over image."""
    images = np.clip(np.asarray(images, np.float32), 0, 255)
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    panels = []
    for image, label, prediction in zip(images, labels, predictions, strict=True):
        truth = overlay(image, label, alpha=alpha, ignore_label=ignore_label)
        predicted = overlay(image, prediction, alpha=alpha, ignore_label=-1)
        panels.append(np.concatenate([image.astype(np.uint8), truth, predicted], axis=1))
    return np.stack(panels)


class SummaryWriter:
    """A TensorBoard writer that is a no-op when `log_dir` is None (non-chief workers)."""

    def __init__(self, log_dir=None):
        self.log_dir = log_dir
        self._writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None

    def scalars(self, step, values):
        if self._writer is None:
            return
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                if value is not None:
                    tf.summary.write(
                        name, tf.constant(float(value), tf.float32), metadata=SCALAR_METADATA
                    )

    def images(self, step, name, images):
        if self._writer is None:
            return
        images = np.asarray(images, np.uint8)
        height, width = images.shape[1:3]
        blobs = [str(width).encode(), str(height).encode()]
        blobs += [tf.io.encode_png(image).numpy() for image in images]
        with self._writer.as_default(step=int(step)):
            tf.summary.write(name, tf.constant(blobs), metadata=IMAGE_METADATA)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
