"""Official TFLite converter (placeholder; being written)."""


def inspect_tflite(path):
    raise NotImplementedError("inspect_tflite is being written")


def load_tflite(path, include_preprocessing=True):
    raise NotImplementedError("load_tflite is being written")
