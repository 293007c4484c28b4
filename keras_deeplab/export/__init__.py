"""Deployment: SavedModel and TFLite export, each verified against the Keras model."""

from keras_deeplab.export.report import VerificationError, write_report
from keras_deeplab.export.saved_model import to_saved_model
from keras_deeplab.export.tflite import to_tflite
from keras_deeplab.export.verify_saved_model import verify_saved_model
from keras_deeplab.export.verify_tflite import verify_tflite

__all__ = [
    "VerificationError",
    "to_saved_model",
    "to_tflite",
    "verify_saved_model",
    "verify_tflite",
    "write_report",
]
