"""ParseNet global context: L2-normalised local and global features, early fusion.

Liu, Rabinovich & Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop,
arXiv:1506.04579. The feature map `x` gives two branches, concatenated before the
classifier ("early fusion"):

* local: `x` L2-normalised at every pixel, times a learned per-channel scale;
* global: `x` averaged over H x W ("pool6"), L2-normalised, times its own per-channel
  scale, and "unpooled" (the vector copied to every pixel of the H x W map).

The normalisation is Caffe's `Normalize` layer of the ParseNet/SSD branch with
`across_spatial=false` and `channel_shared=false`: `y = x / sqrt(sum_c x_c^2 + eps) * scale_c`.

Heads registered here:

* `"global_context"`: the two branches concatenated (2 C channels); put it before any
  classifier (e.g. the `"logits"` head);
* `"parsenet_fc"`: DeepLab-LargeFOV's pool5a, fc6 (3x3, rate 12, 1024) and fc7 (1x1, 1024)
  without fc8, with the layer names of the `"largefov"` head (its weights load by name).
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE, Conv2D
from keras_deeplab.registry import Head, register_head

# ParseNet's initial scale. The paper's value was not re-read ([U] in seed_systems.md §3);
# SSD, by the same author with the same layer, starts at 20. Learned from there.
DEFAULT_CONTEXT_SCALE = 10.0
NORMALIZE_EPSILON = 1e-10  # Caffe NormalizeParameter.eps default


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalization(keras.layers.Layer):
    """Per-pixel L2 normalisation over channels with a learned per-channel scale.

    `y[..., c] = x[..., c] / sqrt(sum_k x[..., k]^2 + epsilon) * scale[c]`, so every pixel of
    the output has norm `scale` when the scale is constant (ParseNet; Caffe `Normalize` with
    `across_spatial=false, channel_shared=false`).

    Args:
        scale_init: initial value of every channel's scale.
        epsilon: added to the squared norm (Caffe's default 1e-10).

    Example:
        >>> y = L2Normalization(scale_init=10.0)(np.ones((1, 4, 4, 8), "float32"))
        >>> float(np.linalg.norm(y[0, 0, 0]))  # 10.0
    """

    def __init__(self, scale_init=DEFAULT_CONTEXT_SCALE, epsilon=NORMALIZE_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.scale_init = float(scale_init)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known.")
        self.scale = self.add_weight(
            name="scale",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.scale_init),
        )

    def call(self, inputs):
        squared = tf.reduce_sum(tf.square(inputs), axis=-1, keepdims=True)
        return inputs * tf.math.rsqrt(squared + self.epsilon) * tf.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale_init": self.scale_init, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Unpool(keras.layers.Layer):
    """ParseNet's "unpool": `[vector [B, 1, 1, C], reference [B, H, W, *]]` -> the vector
    copied to every pixel, `[B, H, W, C]` (dynamic H, W survive export)."""

    def call(self, inputs):
        vector, reference = inputs
        shape = tf.concat([tf.shape(reference)[:3], tf.shape(vector)[3:]], axis=0)
        return tf.broadcast_to(vector, shape)

    def compute_output_shape(self, input_shape):
        vector_shape, reference_shape = input_shape
        return (*reference_shape[:3], vector_shape[3])


def global_context(x, scale_init=DEFAULT_CONTEXT_SCALE, name="context"):
    """ParseNet early fusion on `x` `[B, H, W, C]`: `[local, unpooled global]`, 2C channels.

    Layers: `{name}_local_norm`, `{name}_pool` (global average), `{name}_global_norm`,
    `{name}_unpool`, `{name}_concat`; the two norms hold the C-channel scales.
    """
    local = L2Normalization(scale_init, name=f"{name}_local_norm")(x)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = L2Normalization(scale_init, name=f"{name}_global_norm")(pooled)
    unpooled = Unpool(name=f"{name}_unpool")([pooled, x])
    return keras.layers.Concatenate(name=f"{name}_concat")([local, unpooled])


def largefov_features(x, dropout=0.5):
    """DeepLab-LargeFOV up to fc7 (1024 channels), the `"largefov"` head's layer names."""
    # Caffe AVE pooling with pad 1 counts the padding: zero-pad, then VALID (as largefov).
    x = keras.layers.ZeroPadding2D(1, name="pool5a_pad")(x)
    x = keras.layers.AveragePooling2D(3, strides=1, padding="valid", name="pool5a")(x)
    x = Conv2D(1024, 3, padding="same", dilation_rate=12, activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
    x = Conv2D(1024, 1, activation="relu", name="fc7")(x)
    return keras.layers.Dropout(dropout, name="fc7_dropout")(x)


register_head(
    Head(
        "global_context",
        build=lambda x, features, args: global_context(x, args["context_scale"]),
        options={"context_scale": DEFAULT_CONTEXT_SCALE},
        description="ParseNet: L2-normalised features || unpooled normalised global average",
    )
)
register_head(
    Head(
        "parsenet_fc",
        build=lambda x, features, args: largefov_features(x, args["dropout"]),
        options={"dropout": 0.5},
        description="DeepLab-LargeFOV pool5a, fc6 (3x3, rate 12, 1024), fc7 (1024), no fc8",
    )
)
