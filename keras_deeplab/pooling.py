"""Adaptive average pooling with torch's bin rule, for any (also unknown) input size.

PyTorch's `nn.AdaptiveAvgPool2d(n)` averages, for output row `i` of `n`, the input rows
`[floor(i * H / n), ceil((i + 1) * H / n))` (columns alike). Keras has no such layer, and the
usual stand-in, `AveragePooling2D(H // n)`, needs a static size divisible by `n` (why other
Keras PSPNets take only multiples of 6 * stride). `AdaptiveAveragePooling2D` computes the
bins from the runtime shape: each spatial axis is one matrix product with an `n x H` averaging
matrix built from `tf.range` and comparisons, so the graph keeps dynamic height and width,
exports to SavedModel, and converts to TFLite with builtin ops only (at a fixed size the
matrices fold to constants). When `H` is divisible by `n` the bins are the fixed
`kernel = stride = H / n` windows of Caffe's PSPNet (60/30/20/10 on a 60x60 map).

Zhao et al., "Pyramid Scene Parsing Network", arXiv:1612.01105.
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE


def adaptive_bins(size, bins):
    """`[(start, end), ...]`: the input range of each of `bins` output cells (torch's rule).

    Example:
        >>> adaptive_bins(5, 3)
        [(0, 2), (1, 4), (3, 5)]
    """
    return [((i * size) // bins, -(-((i + 1) * size) // bins)) for i in range(bins)]


def _averaging_matrix(size, bins, dtype):
    """`[bins, size]`: row `i` is 1 / len over bin `i`'s input range, 0 elsewhere."""
    i = tf.range(bins, dtype=tf.int32)[:, None]
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    index = tf.range(size, dtype=tf.int32)[None, :]
    mask = tf.cast(tf.logical_and(index >= start, index < end), dtype)
    return mask / tf.reduce_sum(mask, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """torch's `AdaptiveAvgPool2d` for NHWC inputs of any size: `[B, H, W, C] -> [B, h, w, C]`.

    Args:
        output_size: `n` or `(h, w)`, the number of bins along height and width.

    Example:
        >>> pool = AdaptiveAveragePooling2D(6)
        >>> pool(keras.ops.ones((1, 60, 45, 8))).shape
        TensorShape([1, 6, 6, 8])

    Zhao et al., "Pyramid Scene Parsing Network", arXiv:1612.01105 (pyramid pooling).
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        size = tuple(size) if isinstance(size, (list, tuple)) else ()
        if len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size
        ):
            raise ValueError(
                f"AdaptiveAveragePooling2D: output_size must be a positive integer or a pair "
                f"of them (bins along height and width), e.g. 6 or (3, 6); got {output_size!r}."
            )
        self.output_size = size

    def call(self, inputs):
        shape = tf.shape(inputs)
        batch, height, width = shape[0], shape[1], shape[2]
        channels = inputs.shape[-1] or shape[3]
        bins_h, bins_w = self.output_size
        rows = _averaging_matrix(height, bins_h, inputs.dtype)  # [bins_h, H]
        cols = _averaging_matrix(width, bins_w, inputs.dtype)  # [bins_w, W]
        x = tf.reshape(inputs, [batch, height, width * channels])
        x = tf.matmul(rows, x)  # [B, bins_h, W * C]
        x = tf.reshape(x, [batch, bins_h, width, channels])
        return tf.matmul(cols, x)  # [B, bins_h, bins_w, C]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size)}


__all__ = ["AdaptiveAveragePooling2D", "adaptive_bins"]
