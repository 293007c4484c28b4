"""Segmentation heads, one module each; each registers itself (`keras_deeplab.registry`).

- `aspp`: DeepLab v3 ASPP with image pooling (head `"aspp"`).
- `aspp_v2`: DeepLab v2 ASPP-S/L, summed atrous classifiers (head `"aspp_v2"`).
- `cascade`: DeepLab v3 cascaded block4 copies (head `"cascade"`).
- `decoder`: DeepLab v3+ decoder (head `"decoder"`).
- `largefov`: DeepLab v1 LargeFOV fc6/fc7/fc8 (head `"largefov"`).
- `common`: shared conv/BN blocks and the logits layer (head `"logits"`).
- `context`: Yu & Koltun's dilated context module (head `"context_module"`).
- `fcn`: torchvision's FCN head and its auxiliary head.
- `parsenet`: ParseNet's L2-normalised global context (head `"global_context"`).
- `ppm`: PSPNet's pyramid pooling module and its auxiliary head.
- `refinenet`: RefineNet-4 multi-path refinement.
- `upernet`: UperNet's PPM + FPN fusion and its auxiliary head.

Importing this package registers every head.

Example:
    ```python
    from keras_deeplab.registry import get_head
    import keras_deeplab.heads  # registers the heads

    get_head("aspp").options  # {'atrous_rates': None, 'aspp_separable': True, ...}
    ```
"""

from keras_deeplab.heads import (  # noqa: F401
    aspp,
    aspp_v2,
    cascade,
    common,
    context,
    decoder,
    fcn,
    largefov,
    parsenet,
    ppm,
    refinenet,
    upernet,
)
