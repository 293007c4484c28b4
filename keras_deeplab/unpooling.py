"""Max pooling that remembers where each maximum was, and unpooling to those places.

SegNet (Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017) pools 2x2 / stride 2 and keeps the argmax of
every window; its decoder puts each value back at that position and zeros elsewhere.

`tf.nn.max_pool_with_argmax` has no TFLite builtin, so the position is kept as a **mask**
instead of indices: `MaxPoolingWithMask` returns the pooled map and a 0/1 map of the input's
size that is 1 exactly at the first maximum of every window (window scan order, as
`tf.nn.max_pool_with_argmax` breaks ties), and `MaxUnpooling` repeats each value over its
2x2 window and multiplies by that mask. Every op (PAD, SPACE_TO_DEPTH, MAX_POOL_2D,
GREATER_EQUAL, CAST, MUL, CONCATENATION, DEPTH_TO_SPACE, STRIDED_SLICE) is a TFLite builtin.

Pooling is Caffe's ceil mode: an odd height or width is padded at the bottom / right with the
dtype's lowest value (never a maximum: each window holds at least one real element), and
unpooling crops back to the mask's size, so 45x60 pools to 23x30 and unpools to 45x60.

Example:

```python
import numpy as np
from keras_deeplab.unpooling import MaxPoolingWithMask, MaxUnpooling

x = np.random.default_rng(0).normal(size=(1, 5, 7, 3)).astype("float32")
pooled, mask = MaxPoolingWithMask()(x)  # (1, 3, 4, 3), (1, 5, 7, 3)
restored = MaxUnpooling()([pooled, mask])  # x at each window's maximum, 0 elsewhere
assert np.array_equal(np.asarray(restored), x * np.asarray(mask))
```
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE


def _ceil_half(size):
    return None if size is None else (size + 1) // 2


def _pad_to_even(x):
    """`x` padded at the bottom / right to even H, W with the dtype's lowest value."""
    shape = tf.shape(x)
    pad_h, pad_w = shape[1] % 2, shape[2] % 2
    paddings = [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]
    return tf.pad(x, paddings, constant_values=x.dtype.min)


def first_max_mask(windows, pooled):
    """0/1 masks of the 4 window positions (row-major): 1 at the first one equal to `pooled`.

    `windows` is `[..., 4 * C]` as `tf.nn.space_to_depth(x, 2)` lays it out (position
    `2 * dy + dx` in channels `[k * C, (k + 1) * C)`), `pooled` the window maxima `[..., C]`.
    """
    taken = None
    masks = []
    for window in tf.split(windows, 4, axis=-1):
        is_max = tf.cast(tf.greater_equal(window, pooled), windows.dtype)
        if taken is None:
            mask, taken = is_max, is_max
        else:
            mask = is_max * (1.0 - taken)
            taken = taken + mask
        masks.append(mask)
    return tf.concat(masks, axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPoolingWithMask(keras.layers.Layer):
    """2x2 / stride-2 max pooling (ceil mode) returning `(pooled, mask)`.

    `pooled` is `[B, ceil(H / 2), ceil(W / 2), C]`; `mask` is `[B, H, W, C]`, 1 at the first
    maximum of every window (the position `tf.nn.max_pool_with_argmax` returns), 0
    elsewhere. No weights. Give the mask to `MaxUnpooling` (SegNet, Badrinarayanan et al.
    2017).

    Example:
        >>> pooled, mask = MaxPoolingWithMask()(np.zeros((1, 45, 60, 8), "float32"))
        >>> pooled.shape, mask.shape
        (TensorShape([1, 23, 30, 8]), TensorShape([1, 45, 60, 8]))
    """

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        padded = _pad_to_even(x)
        pooled = tf.nn.max_pool2d(padded, 2, 2, "VALID")
        windows = tf.nn.space_to_depth(tf.stop_gradient(padded), 2)
        mask = first_max_mask(windows, tf.stop_gradient(pooled))
        mask = tf.nn.depth_to_space(mask, 2)[:, :height, :width, :]
        return pooled, mask

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, _ceil_half(height), _ceil_half(width), channels), tuple(input_shape)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxUnpooling(keras.layers.Layer):
    """Indexed unpooling: `[values, mask]` -> each value at its window's recorded maximum.

    `values` is `[B, h, w, C]` (e.g. decoder features at the pooled size) and `mask` the
    `[B, H, W, C]` mask of `MaxPoolingWithMask` with `h = ceil(H / 2)`, `w = ceil(W / 2)`.
    Returns `[B, H, W, C]`: `values[i, j]` at the maximum of window `(i, j)`, zeros elsewhere
    (SegNet's `Upsample` layer, Badrinarayanan et al. 2017). No weights.

    Example:
        >>> pooled, mask = MaxPoolingWithMask()(x)
        >>> MaxUnpooling()([pooled, mask]).shape == x.shape
        True
    """

    def call(self, inputs):
        values, mask = inputs
        values = tf.convert_to_tensor(values)
        mask = tf.cast(mask, values.dtype)
        repeated = tf.nn.depth_to_space(tf.concat([values] * 4, axis=-1), 2)
        shape = tf.shape(mask)
        return repeated[:, : shape[1], : shape[2], :] * mask

    def compute_output_shape(self, input_shape):
        values_shape, mask_shape = input_shape
        return (values_shape[0], mask_shape[1], mask_shape[2], values_shape[3])


__all__ = ["MaxPoolingWithMask", "MaxUnpooling", "first_max_mask"]
