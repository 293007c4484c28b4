"""Segmentation heads, one module each; each registers itself (`keras_deeplab.registry`).

- `aspp`: DeepLab v3 ASPP with image pooling (head `"aspp"`).
- `aspp_v2`: DeepLab v2 ASPP-S/L, summed atrous classifiers (head `"aspp_v2"`).
- `cascade`: DeepLab v3 cascaded block4 copies (head `"cascade"`).
- `decoder`: DeepLab v3+ decoder (head `"decoder"`).
- `largefov`: DeepLab v1 LargeFOV fc6/fc7/fc8 (head `"largefov"`).
- `common`: shared conv/BN blocks and the logits layer (head `"logits"`).

Importing this package registers every head.

Example:
    ```python
    from keras_deeplab.registry import get_head
    import keras_deeplab.heads  # registers the heads

    get_head("aspp").options  # {'atrous_rates': None, 'aspp_separable': True, ...}
    ```
"""

from keras_deeplab.heads import aspp, aspp_v2, cascade, common, decoder, largefov  # noqa: F401
from keras_deeplab.heads import context, parsenet  # noqa: F401
from keras_deeplab.heads import fcn  # noqa: F401
from keras_deeplab.heads import ppm  # noqa: F401
from keras_deeplab.heads import refinenet, upernet  # noqa: F401
