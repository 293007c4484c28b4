"""Architectures, one module each; importing this package registers them all.

Each module registers one `keras_deeplab.registry.Architecture` (which heads follow the
backbone, its options and their checks) and its named models (`register_model`). A new
architecture is a new module here (plus its heads under `keras_deeplab/heads/`) and one
import line below.

Example:
    ```python
    import keras_deeplab.architectures
    from keras_deeplab.registry import ARCHITECTURES

    sorted(ARCHITECTURES)  # ['deeplabv1', 'deeplabv2', 'deeplabv3', 'deeplabv3plus']
    ```
"""

from keras_deeplab.architectures import deeplabv1, deeplabv2, deeplabv3, deeplabv3plus  # noqa: F401
from keras_deeplab.architectures import segnet as segnet  # noqa: F401
from keras_deeplab.architectures import parsenet  # noqa: F401
from keras_deeplab.architectures import pspnet  # noqa: F401
from keras_deeplab.architectures import dilation  # noqa: F401
from keras_deeplab.architectures import fcn, fcn_resnet  # noqa: F401
from keras_deeplab.architectures import refinenet, upernet  # noqa: F401
from keras_deeplab.architectures import unet  # noqa: F401
