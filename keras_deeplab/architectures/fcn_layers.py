"""Layers of the FCN skip nets: the fixed bilinear upsampler and the offset crop.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038); reference Caffe nets `shelhamer/fcn.berkeleyvision.org`.

* `bilinear_kernel(size)`: the 2-D kernel of the reference `surgery.upsample_filt`
  (`factor = (size + 1) // 2`, centre `factor - 1` for odd sizes, `factor - 0.5` for even).
* `BilinearUpsampling`: a Keras initializer filling a `Conv2DTranspose` kernel
  `[k, k, C, C]` with that kernel on the class diagonal (`kernel[:, :, c, c]`) and zeros
  elsewhere, as `surgery.interp` (Caffe) and torchfcn's `get_upsampling_weight` do. The
  reference deconvolutions have `lr_mult: 0`: `bilinear_upsampling` makes them
  non-trainable (their weights count in `count_params()`, not in the trainable count).
* `CropToReference`: Caffe's `Crop` layer (`axis: 2`, one offset for H and W): `x[:,
  offset:offset + H_ref, offset:offset + W_ref]` with `H_ref, W_ref` the reference's size.

All layers are registered serializable objects (a `.keras` file reloads them in safe mode)
and convert to builtin TFLite ops (TRANSPOSE_CONV, SLICE).

Example:
    ```python
    import keras
    from keras_deeplab.architectures.fcn_layers import CropToReference, bilinear_upsampling

    x = keras.Input((None, None, 21))
    up = bilinear_upsampling(21, 4, 2, name="upscore2")(x)  # (H - 1) * 2 + 4
    y = CropToReference(1, name="crop")([up, x])  # back to the size of x, offset 1
    ```
"""

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.layers import PACKAGE


def bilinear_kernel(size):
    """The `size x size` bilinear upsampling kernel of the reference FCN code (float64)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"bilinear_kernel: size must be a positive integer; got {size!r}.")
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.arange(size, dtype=np.float64)
    profile = 1.0 - np.abs(grid - center) / factor
    return np.outer(profile, profile)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearUpsampling(keras.initializers.Initializer):
    """`Conv2DTranspose` kernel `[k, k, C, C]`: `bilinear_kernel(k)` on the class diagonal.

    Each class is upsampled on its own (class i -> class i), the reference FCN's fixed
    interpolation. The kernel must be square with as many outputs as inputs.
    """

    def __call__(self, shape, dtype=None):
        kh, kw, out_channels, in_channels = shape
        if kh != kw or out_channels != in_channels:
            raise ValueError(
                f"BilinearUpsampling needs a square kernel with as many output as input "
                f"channels ([k, k, C, C]); got shape {tuple(shape)}."
            )
        kernel = np.zeros(shape, dtype=np.float64)
        filt = bilinear_kernel(int(kh))
        for c in range(out_channels):
            kernel[:, :, c, c] = filt
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


def bilinear_upsampling(channels, kernel_size, stride, name):
    """The reference FCN's fixed `Deconvolution` (no bias, `lr_mult: 0`): a non-trainable
    `Conv2DTranspose(channels, kernel_size, stride, "valid")` holding `BilinearUpsampling`.
    Output size `(H - 1) * stride + kernel_size`, as Caffe and torch."""
    return keras.layers.Conv2DTranspose(
        channels,
        kernel_size,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=False,
        name=name,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class CropToReference(keras.layers.Layer):
    """Caffe `Crop` (axis 2): `x[:, offset:offset + H_ref, offset:offset + W_ref, :]`.

    Called on `[x, reference]`; the output has the reference's spatial size and the
    channels of `x`. `x` must be at least `offset + H_ref` by `offset + W_ref` (the FCN
    nets guarantee it for every input size).

    Args:
        offset: the crop offset (both spatial axes), e.g. 19 for FCN-32s' `score`.
    """

    def __init__(self, offset, **kwargs):
        super().__init__(**kwargs)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(
                f"CropToReference: offset must be a non-negative integer; got {offset!r}."
            )
        self.offset = offset

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        begin = tf.constant([0, self.offset, self.offset, 0], dtype=tf.int32)
        sizes = tf.concat([[-1], size, [-1]], axis=0)
        return tf.slice(x, begin, sizes)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


__all__ = ["BilinearUpsampling", "CropToReference", "bilinear_kernel", "bilinear_upsampling"]
