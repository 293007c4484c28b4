"""U-Net: a contracting path of unpadded 3x3 convs and 2x2 max pools, and an expansive path
of 2x2 up-convolutions concatenated with the centre-cropped contracting features.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597.

One architecture, `"unet"`, two named models:

* `unet`: the paper's network (`padding="valid"`): 1 input channel, 2 classes, widths 64
  to 1024, 31,030,658 parameters. Input 572 gives output 388; every input must be 12 mod 16
  and at least 188 (output = input - 184). Evaluate large images with the paper's
  overlap-tile strategy: mirror-pad the image by `valid_border()` (92 px) on every side.
* `unet_same`: `padding="same"`, output at the input size for any H, W >= 1 and any
  channel count (3 by default: RGB).

Choices where the paper's text leaves one (each as in the authors' released Caffe net,
`u-net-release-2015-10-02`, `phseg_v5`):

* a ReLU follows every up-convolution (Fig. 1 does not show one);
* the concatenation is `[up-sampled, cropped skip]`;
* dropout (element-wise, training only) on the outputs of the last two contracting levels
  (512 and 1024 channels); the 512 one feeds both the pool and the skip;
* kernels: Gaussian, std sqrt(2 / fan_in) (the paper's init, not truncated); biases 0.

Odd sizes in `padding="same"`: max pooling rounds up (`padding="same"`: the last row and
column pool alone), the up-convolution then gives one row/column more than the skip and
its bottom/right excess is cropped. No input pixel is dropped.

Example:

```python
import numpy as np
import keras_deeplab

model = keras_deeplab.create_model("unet", input_shape=(188, 188, 1))
model(np.zeros((1, 188, 188, 1), "float32")).shape  # (1, 4, 4, 2)
same = keras_deeplab.create_model("unet_same", base_filters=16, num_classes=3)
same(np.zeros((1, 37, 50, 3), "float32")).shape  # (1, 37, 50, 3)
```
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE, BatchNormalization, Conv2D
from keras_deeplab.registry import Architecture, register_architecture, register_model

PADDINGS = ("valid", "same")
DEPTHS = (3, 4, 5)  # output stride 2**depth, one of the package's 8 / 16 / 32


def kernel_initializer():
    """The paper's init: N(0, 2 / fan_in), not truncated (Caffe's patched "xavier")."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


# ---------------------------------------------------------------- valid-padding geometry


def valid_border(depth=4):
    """Pixels a valid U-Net loses on each side: 92 at depth 4 (572 -> 388).

    Example:
        >>> valid_border(), valid_border(5)
        (92, 188)
    """
    return 6 * 2**depth - 4


def valid_output_size(size, depth=4):
    """Output size of a valid U-Net for an input `size`, None if it cannot take it.

    Example:
        >>> valid_output_size(572), valid_output_size(444), valid_output_size(512)
        (388, 260, None)
    """
    stride = 2**depth
    if size < 12 * stride - 4 or size % stride != stride - 4:
        return None
    return size - 2 * valid_border(depth)


def nearest_valid_sizes(size, depth=4):
    """`(below, above)`: the valid input sizes nearest to `size` (below None if none).

    Example:
        >>> nearest_valid_sizes(512)
        (508, 524)
    """
    stride = 2**depth
    smallest = 12 * stride - 4
    if size < smallest:
        return None, smallest
    below = size - (size - (stride - 4)) % stride  # the largest valid size <= size
    if below < size:
        return below, below + stride
    return (size - stride if size - stride >= smallest else None), size + stride


def overlap_tile_padding(size, depth=4):
    """`(before, after)` mirror padding of an image side of `size` pixels for a valid U-Net:
    the padded side is a valid input whose output covers the whole side (the paper's
    overlap-tile strategy); keep the first `size` output pixels.

    Example:
        >>> overlap_tile_padding(512)  # 92 + 512 + 96 = 700, a valid input: output 516 >= 512
        (92, 96)
    """
    border = valid_border(depth)
    padded = size + 2 * border
    if valid_output_size(padded, depth) is None:
        below, above = nearest_valid_sizes(padded, depth)
        padded = above
    return border, padded - size - border


def invalid_size_message(size, axis, depth=4):
    below, above = nearest_valid_sizes(size, depth)
    stride = 2**depth
    choices = f"{below} or {above}" if below is not None else f"{above} (the smallest)"
    return (
        f"U-Net with padding='valid' (depth {depth}) takes sizes {stride - 4} mod {stride}, "
        f"at least {12 * stride - 4} (output = input - {2 * valid_border(depth)}); the input "
        f"{axis} is {size}: use {choices}, mirror-pad the image by {valid_border(depth)} px "
        "on every side (the paper's overlap-tile strategy), or use padding='same' "
        "(model 'unet_same') for any size."
    )


def check_valid_input(input_shape, depth=4):
    """Raises `ValueError` (naming the nearest valid sizes) for a static H or W a valid
    U-Net of this depth cannot take."""
    for axis, size in zip(("height", "width"), input_shape[:2], strict=True):
        if size is not None and valid_output_size(int(size), depth) is None:
            raise ValueError(invalid_size_message(int(size), axis, depth))


# ---------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package=PACKAGE)
class ValidInputCheck(keras.layers.Layer):
    """Identity that rejects the spatial sizes a valid U-Net cannot take.

    Static sizes: a `ValueError` naming the nearest valid sizes, when the graph is built or
    traced (eager calls, `predict`, exports at a fixed size: no op is added). Dynamic sizes
    (a graph traced with None height/width, e.g. a SavedModel signature): an in-graph
    assertion whose message gives the rule.
    """

    def __init__(self, depth=4, **kwargs):
        super().__init__(**kwargs)
        self.depth = int(depth)

    def call(self, inputs):
        static = inputs.shape[1:3]
        check_valid_input(tuple(static), self.depth)
        if None not in tuple(static):
            return inputs
        stride = 2**self.depth
        size = tf.shape(inputs)[1:3]
        ok = tf.reduce_all(
            (tf.math.floormod(size, stride) == stride - 4) & (size >= 12 * stride - 4)
        )
        message = (
            f"U-Net with padding='valid' (depth {self.depth}) takes heights and widths "
            f"{stride - 4} mod {stride}, at least {12 * stride - 4}; mirror-pad the image by "
            f"{valid_border(self.depth)} px (overlap-tile) or use padding='same'. Got "
            "[height, width]:"
        )
        with tf.control_dependencies([tf.debugging.Assert(ok, [message, size])]):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CropLike(keras.layers.Layer):
    """Crops `x` to the spatial size of `reference`: `layer([x, reference])`.

    Args:
        centre: True: centred crop (the valid U-Net's skip connections; the margins are
            equal); False: the top-left part (the same-padding U-Net's odd sizes).
    """

    def __init__(self, centre=True, **kwargs):
        super().__init__(**kwargs)
        self.centre = bool(centre)

    def call(self, inputs):
        x, reference = inputs
        if None not in (*x.shape[1:3], *reference.shape[1:3]) and (
            tuple(x.shape[1:3]) == tuple(reference.shape[1:3])
        ):
            return x  # nothing to crop (same padding, even sizes): no op in exports
        offsets, sizes = [], []
        for axis in (1, 2):
            have, want = x.shape[axis], reference.shape[axis]
            if have is None or want is None:  # dynamic: computed in the graph
                have, want = tf.shape(x)[axis], tf.shape(reference)[axis]
            sizes.append(want)
            offsets.append((have - want) // 2 if self.centre else 0)
        (top, left), (height, width) = offsets, sizes
        return x[:, top : top + height, left : left + width, :]

    def compute_output_shape(self, input_shape):
        x, reference = input_shape
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self):
        return {**super().get_config(), "centre": self.centre}


# ---------------------------------------------------------------- graph


def _conv(x, filters, args, name):
    """3x3 conv + ReLU (conv without bias + BN + ReLU with `batch_norm`)."""
    batch_norm = args["batch_norm"]
    x = Conv2D(
        filters,
        3,
        padding=args["padding"],
        use_bias=not batch_norm,
        kernel_initializer=kernel_initializer(),
        name=name,
    )(x)
    if batch_norm:
        x = BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _block(x, filters, args, name):
    x = _conv(x, filters, args, f"{name}_conv1")
    return _conv(x, filters, args, f"{name}_conv2")


def unet_graph(x, args):
    """U-Net logits for a preprocessed image `x` (`args`: the model's resolved arguments).

    Layer names: `down{i}_conv{1,2}` (level i = 1..depth), `bottom_conv{1,2}`,
    `up{i}_upconv` then `up{i}_conv{1,2}` (i = depth..1), `logits`.
    """
    depth, base, valid = args["depth"], args["base_filters"], args["padding"] == "valid"
    if valid:
        x = ValidInputCheck(depth, name="valid_input_check")(x)
    rate = args["dropout"]
    skips = []
    for level in range(1, depth + 1):
        x = _block(x, base * 2 ** (level - 1), args, f"down{level}")
        if rate and level == depth:  # the released net's d3c dropout: before pool and crop
            x = keras.layers.Dropout(rate, name=f"down{level}_dropout")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, padding=args["padding"], name=f"pool{level}")(x)
    x = _block(x, base * 2**depth, args, "bottom")
    if rate:
        x = keras.layers.Dropout(rate, name="bottom_dropout")(x)
    for level in range(depth, 0, -1):
        filters = base * 2 ** (level - 1)
        x = keras.layers.Conv2DTranspose(
            filters,
            2,
            strides=2,
            kernel_initializer=kernel_initializer(),
            name=f"up{level}_upconv",
        )(x)
        x = keras.layers.ReLU(name=f"up{level}_upconv_relu")(x)
        skip = skips[level - 1]
        if valid:
            skip = CropLike(centre=True, name=f"up{level}_crop")([skip, x])
        else:  # ceil pooling: x has the skip's size or one more row/column
            x = CropLike(centre=False, name=f"up{level}_crop")([x, skip])
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skip])
        x = _block(x, filters, args, f"up{level}")
    return Conv2D(args["num_classes"], 1, kernel_initializer=kernel_initializer(), name="logits")(x)


def _check_int(args, key, low, high=None):
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}; got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}]; got {value!r}.")


def _resolve(args):
    if args["backbone"] is not None:
        raise ValueError(
            f"U-Net has no backbone (it is one network from image to logits); got backbone="
            f"{args['backbone']!r}: remove the backbone argument (width: base_filters, "
            "levels: depth)."
        )
    if args["padding"] not in PADDINGS:
        raise ValueError(
            f"padding must be 'valid' (the paper's network, output smaller than the input) or "
            f"'same' (output at the input size); got {args['padding']!r}."
        )
    _check_int(args, "base_filters", 1)
    depth = args["depth"]
    if depth not in DEPTHS or isinstance(depth, bool):
        raise ValueError(
            f"depth (number of poolings) must be one of {DEPTHS}; got {depth!r} (the paper: 4)."
        )
    stride = 2**depth
    if args["output_stride"] not in (16, stride):  # 16: the default, taken as unset
        raise ValueError(
            f"A U-Net's output stride is 2**depth = {stride}; got output_stride="
            f"{args['output_stride']!r}: leave it unset (choose depth instead)."
        )
    if not isinstance(args["batch_norm"], bool):
        raise ValueError(f"batch_norm must be True or False; got {args['batch_norm']!r}.")
    rate = args["dropout"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"dropout must be a rate in [0, 1) (0: none); got {rate!r}.")
    if args["padding"] == "valid":
        check_valid_input(args["input_shape"], depth)
    return {**args, "output_stride": stride, "dropout": float(rate)}


def _overlap_tile(args, side):
    """The Segmenter's mirror padding of an image side (valid padding only)."""
    if args["padding"] != "valid":
        return None
    return overlap_tile_padding(side, args["depth"])


register_architecture(
    Architecture(
        name="unet",
        graph=unet_graph,
        options={
            "padding": "valid",
            "base_filters": 64,
            "depth": 4,
            "batch_norm": False,
            "dropout": 0.5,
        },
        default_backbone=None,
        default_output_stride=16,
        resolve=_resolve,
        preprocessing="unit",
        upsample=None,
        input_channels=None,
        overlap_tile=_overlap_tile,
        description="U-Net (Ronneberger et al. 2015): valid or same padding, any channel count",
    )
)

register_model("unet", "unet", padding="valid", num_classes=2, input_shape=(None, None, 1))
register_model("unet_same", "unet", padding="same", num_classes=2)
