"""TFLite export (placeholder; being written)."""


def to_tflite(model, path, input_size=513, quantize="none", **kwargs):
    raise NotImplementedError


def verify_tflite(model, path, images, **kwargs):
    raise NotImplementedError
