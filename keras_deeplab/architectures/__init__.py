"""Architectures, one module each; importing this package registers them all.

Each module registers one `keras_deeplab.registry.Architecture` (which heads follow the
backbone, its options and their checks) and its named models (`register_model`). A new
architecture is a new module here (plus its heads under `keras_deeplab/heads/`) and one
import line below.

Example:
    ```python
    import keras_deeplab.architectures
    from keras_deeplab.registry import ARCHITECTURES

    sorted(ARCHITECTURES)  # ['context', 'deeplabv1', ..., 'unet', 'upernet']
    ```
"""

from keras_deeplab.architectures import (  # noqa: F401
    deeplabv1,
    deeplabv2,
    deeplabv3,
    deeplabv3plus,
    dilation,
    fcn,
    fcn_resnet,
    parsenet,
    pspnet,
    refinenet,
    segnet,
    unet,
    upernet,
)
