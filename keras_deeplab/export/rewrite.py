"""Export-only graph rewrites: the network a TFLite file is converted from.

`optimize_for_export(model, hw)` returns the model at a static input size with the rewrites
below applied; it shares the model's layers and weights and is used only for conversion
(the written file is still verified against the unmodified model).

Example:

```python
network, applied = optimize_for_export(model, (257, 257))  # applied: ["image_pooling_fold"]
```
"""

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab import _compat
from keras_deeplab.msc import MultiScaleInputs
from keras_deeplab.optimize import bn_scale_shift

IMAGE_POOLING = ("image_pooling_mean", "image_pooling_resize", "aspp_concat")
PROJECTION = ("concat_projection", "concat_projection_BatchNorm")


class _ImagePoolingProjection(keras.layers.Layer):
    """`BN(conv1x1(concat(branches)))` with the constant image-pooling branch kept 1x1.

    The image-pooling branch is a 1x1 map resized with align-corners, i.e. the same vector
    at every position, so its rows of the 1x1 projection kernel can be applied on the 1x1
    map and broadcast-added: no resize, no concatenation of that branch, and the projection
    conv shrinks by its channels. BatchNorm (inference statistics) is folded into both
    kernels and the bias (the weights at construction, as constants). Equal to the original
    up to float rounding. Export-only.
    """

    def __init__(self, conv, bn, constant, **kwargs):
        super().__init__(**kwargs)
        scale, shift = bn_scale_shift(bn)  # float64, as optimize_for_inference folds
        kernel = np.asarray(conv.kernel, np.float64)[0, 0] * scale  # [in, out]
        self.kernel, self.shift = kernel.astype(np.float32), shift.astype(np.float32)
        self.filters = conv.filters
        self.constant = tuple(constant)  # per input: True for the constant (1x1) branches

    def call(self, inputs):
        rows = {True: [], False: []}
        offset = 0
        for x, constant in zip(inputs, self.constant, strict=True):
            channels = x.shape[-1]
            rows[constant].extend(range(offset, offset + channels))
            offset += channels

        def project(tensors, which):
            x = tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=-1)
            kernel = tf.constant(self.kernel[rows[which]][None, None])
            return tf.nn.conv2d(x, kernel, strides=1, padding="VALID")

        spatial = [x for x, c in zip(inputs, self.constant, strict=True) if not c]
        constant = [x for x, c in zip(inputs, self.constant, strict=True) if c]
        return project(spatial, False) + (project(constant, True) + self.shift)

    def compute_output_shape(self, input_shapes):
        spatial = next(s for s, c in zip(input_shapes, self.constant, strict=True) if not c)
        return (*spatial[:3], self.filters)


def _consumers(functional):
    """`{layer name: [consumer layer names]}` within `functional`'s own graph."""
    nodes = _compat.graph_nodes(functional)
    producer = {id(t): node.operation.name for node in nodes for t in node.outputs}
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            if id(t) in producer:
                consumers.setdefault(producer[id(t)], []).append(node.operation.name)
    return consumers


def _foldable(model):
    """True when the ASPP image-pooling branch and its projection have the expected form."""
    try:
        layers = {name: model.get_layer(name) for name in IMAGE_POOLING + PROJECTION}
        consumers = _consumers(model)
    except (ValueError, AttributeError):
        return False
    conv, bn = layers["concat_projection"], layers["concat_projection_BatchNorm"]
    checks = (
        type(layers["image_pooling_resize"]).__name__ == "ResizeBilinear",
        isinstance(layers["image_pooling_mean"], keras.layers.GlobalAveragePooling2D),
        isinstance(layers["aspp_concat"], keras.layers.Concatenate),
        layers["aspp_concat"].axis in (-1, 3),
        isinstance(conv, keras.layers.Conv2D),
        tuple(conv.kernel_size) == (1, 1) and tuple(conv.strides) == (1, 1),
        not conv.use_bias and conv.groups == 1,
        conv.activation is keras.activations.linear,
        isinstance(bn, keras.layers.BatchNormalization) and bn.axis in (-1, 3),
        consumers.get("image_pooling_resize") == ["aspp_concat"],
        consumers.get("aspp_concat") == ["concat_projection"],
        consumers.get("concat_projection") == ["concat_projection_BatchNorm"],
    )
    return all(checks)


def optimize_for_export(model, hw):
    """`(network, applied)`: `model` at the static size `hw` with export-only rewrites.

    The network shares the model's layers and weights. Rewrites (listed in `applied`):
    * `"image_pooling_fold"`: see `_ImagePoolingProjection` (about 8% faster on the
      257x257 MobileNetV2 model: 71M of its 726M multiply-adds are the image-pooling rows of
      the projection, computed at every position for a constant vector).
    The image pooling stays a MEAN: as fast as Google's fixed-size AVERAGE_POOL_2D in float
    (measured), and unlike it delegated to XNNPACK in int8 (a quantized AVERAGE_POOL_2D
    splits the graph into two delegate partitions).
    Models without this ASPP form (v1, v2, MSC, cascade) are only given the static size.
    """
    if isinstance(model, MultiScaleInputs) or not _compat.is_functional(model):
        return model, []
    fold = _foldable(model)
    applied, constant_ids = [], set()

    def call(layer, *args, **kwargs):
        if fold and layer.name == "image_pooling_resize":
            pooled = args[0][0]
            constant_ids.add(id(pooled))
            return pooled
        if fold and layer.name == "aspp_concat":
            inputs = list(args[0])
            applied.append("image_pooling_fold")
            return _ImagePoolingProjection(
                model.get_layer("concat_projection"),
                model.get_layer("concat_projection_BatchNorm"),
                [id(x) in constant_ids for x in inputs],
                name="concat_projection_folded",
            )(inputs)
        if fold and layer.name in PROJECTION:
            return args[0]
        return layer(*args, **kwargs)

    static = keras.Input(batch_shape=(1, *hw, model.input_shape[-1] or 3))
    network = keras.models.clone_model(
        model, input_tensors=static, clone_function=lambda layer: layer, call_function=call
    )
    return network, applied
