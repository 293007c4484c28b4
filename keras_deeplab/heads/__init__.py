"""Segmentation heads, one module each (imported by `keras_deeplab.models`).

- `aspp`: DeepLab v3 ASPP with image pooling (`aspp.aspp`).
- `aspp_v2`: DeepLab v2 ASPP-S/L, summed atrous classifiers (`aspp_v2.aspp_v2`).
- `cascade`: DeepLab v3 cascaded block4 copies (`cascade.cascade`).
- `decoder`: DeepLab v3+ decoder (`decoder.decoder`).
- `largefov`: DeepLab v1 LargeFOV fc6/fc7/fc8 (`largefov.largefov`).
- `common`: shared conv/BN blocks and the logits layer.

Example:
    ```python
    from keras_deeplab.heads.aspp import aspp
    ```
"""
