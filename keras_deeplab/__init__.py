"""keras_deeplab: the DeepLab family (v1, v2, v3, v3+) as Keras 3 models.

Faithful to the official TensorFlow implementation (`tensorflow/models`
`research/deeplab`) and to the authors' Caffe nets for v1/v2.

Everything is imported on first use (PEP 562), so `import keras_deeplab` is quick and does not
load TensorFlow or Keras; the subpackages are attributes all the same.

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    keras_deeplab.weights.load_tflite      # subpackages load on first attribute access
    keras_deeplab.export.to_tflite
    ```
"""

import importlib as _importlib
import os as _os
import pkgutil as _pkgutil

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

# public name -> module that defines it
_ATTRIBUTES = {
    "get_backbone": "keras_deeplab.backbones",
    "list_backbones": "keras_deeplab.backbones",
    "ConfusionMatrix": "keras_deeplab.evaluation",
    "Segmenter": "keras_deeplab.evaluation",
    "count_macs": "keras_deeplab.macs",
    "count_params": "keras_deeplab.macs",
    "DeepLabV1": "keras_deeplab.models",
    "DeepLabV2": "keras_deeplab.models",
    "DeepLabV3": "keras_deeplab.models",
    "DeepLabV3Plus": "keras_deeplab.models",
    "create_model": "keras_deeplab.models",
    "list_models": "keras_deeplab.models",
    "list_architectures": "keras_deeplab.models",
    "MultiScaleInputs": "keras_deeplab.msc",
    "SegmentationModel": "keras_deeplab.segmentation_model",
}

# every subpackage and module (`weights`, `export`, `data`, ...) is `keras_deeplab.<name>`
_SUBMODULES = frozenset(m.name for m in _pkgutil.iter_modules(__path__))


def __getattr__(name):
    if name in _ATTRIBUTES:
        value = getattr(_importlib.import_module(_ATTRIBUTES[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    public = {n for n in globals() if n.startswith("__") or not n.startswith("_")}
    return sorted(public | set(_ATTRIBUTES) | _SUBMODULES)


__all__ = [
    "ConfusionMatrix",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MultiScaleInputs",
    "SegmentationModel",
    "Segmenter",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "get_backbone",
    "list_architectures",
    "list_backbones",
    "list_models",
]
