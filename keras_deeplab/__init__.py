"""keras_deeplab: the DeepLab family (v1, v2, v3, v3+) as Keras 3 models.

Faithful to the official TensorFlow implementation (`tensorflow/models`
`research/deeplab`) and to the authors' Caffe nets for v1/v2.

Everything is imported on first use (PEP 562), so `import keras_deeplab` is quick and does not
load TensorFlow or Keras; the subpackages are attributes all the same. The package's Keras
classes (`SegmentationModel`, its layers) are registered with Keras as soon as Keras is
imported (before or after `keras_deeplab`), so `keras.models.load_model("m.keras")` needs no
`custom_objects`.

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
import sys as _sys
import warnings as _warnings

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TF's oneDNN CPU kernels are left as TF decides (on by itself only on AVX-512 CPUs): on the
# 2-core AMD EPYC (AVX2) host, oneDNN ran 5x5 and 7x7 convolutions at 360x480 for minutes
# (SegNet-Basic's 7x7 at 64 channels), 2026-12-01; docs/training.md "CPU kernels". Only
# `keras-deeplab demo` (MobileNetV2: 1x1, 3x3 and depthwise convolutions) turns it on.

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


# Importing this module registers every keras_deeplab class a `.keras` file can name (the
# models, backbones, layers, MultiScaleInputs, the inference-only convolution).
_KERAS_CLASSES = "keras_deeplab.msc"


def _register_with_keras():
    try:
        _importlib.import_module(_KERAS_CLASSES)
    except Exception as error:  # noqa: BLE001 - never break `import keras` itself
        _warnings.warn(
            f"keras_deeplab could not register its Keras classes ({error}); loading its "
            ".keras files will fail until `import keras_deeplab.segmentation_model` works.",
            stacklevel=2,
        )


class _RegisterAfterKeras:
    """Import hook: registers the package's Keras classes once Keras is imported.

    It waits until no keras_deeplab, keras or tensorflow module is half-imported (TensorFlow
    imports Keras from its own `__init__`, and the registering modules import both), then
    removes itself.
    """

    def __init__(self):
        self.depth = 0

    def find_spec(self, name, path=None, target=None):
        if name not in ("keras", "tensorflow") and not name.startswith(f"{__name__}."):
            return None
        spec = None
        for finder in _sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            self.depth += 1
            try:
                exec_module(module)
            finally:
                self.depth -= 1
            if self.depth == 0 and "keras" in _sys.modules and self in _sys.meta_path:
                _sys.meta_path.remove(self)
                _register_with_keras()

        loader.exec_module = exec_then_register
        return spec


if "keras" in _sys.modules:
    _register_with_keras()
elif not any(type(finder).__name__ == "_RegisterAfterKeras" for finder in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterAfterKeras())


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
