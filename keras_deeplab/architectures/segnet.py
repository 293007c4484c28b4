"""SegNet and SegNet-Basic: encoder-decoders that unpool with the encoder's max locations.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", TPAMI 2017. The graphs are those of the official
`SegNet-Tutorial/Models/segnet_train.prototxt` and `segnet_basic_train.prototxt`
(layer names kept):

* `segnet`: the 13 VGG-16 convs (3x3, bias) each with BatchNorm + ReLU, 2x2 max pooling
  keeping the argmax after each of the 5 blocks; the mirrored decoder unpools with those
  locations and runs 3x3 conv + BN + ReLU blocks (widths 512, 512, 512 | 512, 512, 256 |
  256, 256, 128 | 128, 64 | 64), then `conv1_1_D`: 3x3 to the classes, no BN, no ReLU.
  29,449,355 learnable parameters at 11 classes (Keras total 29,465,227).
* `segnet_basic`: Caffe LRN on the input (local_size 5, alpha 1e-4, beta 0.75), 4 encoders
  of 7x7/64 conv + BN + ReLU + indexed pooling, 4 decoders of unpooling + 7x7/64 conv + BN
  (no ReLU), 1x1 classifier. 1,416,587 learnable (Keras total 1,417,611) at 11 classes.

Pooling is Caffe's ceil mode and unpooling restores the pre-pool size, so any H, W works and
the logits come out at the input size (360x480 pools to 180x240, 90x120, 45x60, 23x30 and
12x15 and unpools back exactly). Unpooling uses a first-argmax mask, TFLite builtins only
(`keras_deeplab.unpooling`). Input: RGB 0..255, fed to the network as raw BGR 0..255
(preprocessing `"bgr"`), as SegNet-Tutorial's `DenseImageData` layer (OpenCV, no transform).
Initialisation as the prototxt: MSRA (He) normal weights, zero biases, BN scale 1, shift 0.001.

Example:

```python
import keras_deeplab

model = keras_deeplab.create_model("segnet_basic", num_classes=11)
model.count_params()  # 1,417,611 (1,416,587 trainable)
```
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE, BatchNormalization, Conv2D
from keras_deeplab.registry import Architecture, register_architecture, register_model
from keras_deeplab.unpooling import MaxPoolingWithMask, MaxUnpooling

# (block, [encoder conv widths]) of VGG-16; the decoder mirrors it.
VGG16_BLOCKS = (
    (1, (64, 64)),
    (2, (128, 128)),
    (3, (256, 256, 256)),
    (4, (512,) * 3),
    (5, (512,) * 3),
)
BN_EPSILON = 1e-5
BN_SHIFT_INIT = 0.001  # the prototxt's BN shift_filler


def kernel_initializer():
    """Caffe's "msra" filler: N(0, 2 / fan_in), not truncated."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's across-channel LRN: `x / (1 + alpha / size * sum over size channels x^2)^beta`.

    Caffe divides `alpha` by `local_size`; TF's `local_response_normalization` does not,
    so this layer passes `alpha / local_size` (TFLite builtin LOCAL_RESPONSE_NORMALIZATION).
    SegNet-Basic normalises its input with size 5, alpha 1e-4, beta 0.75. No weights.

    Example:
        >>> LocalResponseNormalization()(np.ones((1, 4, 4, 3), "float32")).shape
        TensorShape([1, 4, 4, 3])
    """

    def __init__(self, local_size=5, alpha=1e-4, beta=0.75, bias=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(local_size, int) or local_size < 1 or local_size % 2 == 0:
            raise ValueError(
                f"local_size must be an odd positive integer (Caffe's LRN window); got "
                f"{local_size!r}."
            )
        self.local_size = local_size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = float(bias)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        y = tf.nn.local_response_normalization(
            x,
            depth_radius=(self.local_size - 1) // 2,
            bias=self.bias,
            alpha=self.alpha / self.local_size,
            beta=self.beta,
        )
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "local_size": self.local_size,
            "alpha": self.alpha,
            "beta": self.beta,
            "bias": self.bias,
        }


def conv_bn(x, filters, kernel_size, name, relu=True):
    """Conv (bias, MSRA init) + BatchNorm (`<name>_bn`) [+ ReLU], as the prototxt's blocks."""
    x = Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=True,
        kernel_initializer=kernel_initializer(),
        name=name,
    )(x)
    x = BatchNormalization(
        epsilon=BN_EPSILON,
        beta_initializer=keras.initializers.Constant(BN_SHIFT_INIT),
        name=f"{name}_bn",
    )(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def classifier(x, num_classes, kernel_size, name):
    """The last conv: class scores, bias, no BN, no ReLU."""
    return Conv2D(
        num_classes,
        kernel_size,
        padding="same",
        use_bias=True,
        kernel_initializer=kernel_initializer(),
        name=name,
    )(x)


def segnet_graph(x, args):
    """SegNet (VGG-16 encoder with BN): normalised image -> logits at the input size."""
    masks = {}
    for block, widths in VGG16_BLOCKS:
        for i, filters in enumerate(widths, start=1):
            x = conv_bn(x, filters, 3, f"conv{block}_{i}")
        x, masks[block] = MaxPoolingWithMask(name=f"pool{block}")(x)
    for block, widths in reversed(VGG16_BLOCKS):
        x = MaxUnpooling(name=f"upsample{block}")([x, masks[block]])
        # Decoder widths: the encoder's in reverse order, the last one of each block
        # stepping down to the previous block's width (4_1_D 256, 3_1_D 128, 2_1_D 64).
        out_widths = list(widths)
        if block > 1:
            out_widths[0] = VGG16_BLOCKS[block - 2][1][0]
        for i in range(len(widths), 0, -1):
            if block == 1 and i == 1:
                return classifier(x, args["num_classes"], 3, "conv1_1_D")
            x = conv_bn(x, out_widths[i - 1], 3, f"conv{block}_{i}_D")
    raise AssertionError("unreachable")


def segnet_basic_graph(x, args):
    """SegNet-Basic: LRN, 4 x (7x7 conv + BN + ReLU + pool), 4 x (unpool + 7x7 conv + BN)."""
    filters, kernel = args["filters"], args["kernel_size"]
    x = LocalResponseNormalization(5, 1e-4, 0.75, name="norm")(x)
    masks = {}
    for block in range(1, 5):
        x = conv_bn(x, filters, kernel, f"conv{block}")
        x, masks[block] = MaxPoolingWithMask(name=f"pool{block}")(x)
    for block in range(4, 0, -1):
        x = MaxUnpooling(name=f"upsample{block}")([x, masks[block]])
        x = conv_bn(x, filters, kernel, f"conv_decode{block}", relu=False)
    return classifier(x, args["num_classes"], 1, "conv_classifier")


def _resolve(name, output_stride):
    def resolve(args):
        if args["backbone"] is not None:
            raise ValueError(
                f"{name} builds its own encoder (VGG-16 with BatchNorm and indexed pooling for "
                f"segnet, four 7x7 convolutions for segnet_basic) and takes no backbone; got "
                f"backbone={args['backbone']!r}: remove the backbone argument (for a DeepLab "
                f"on that backbone use e.g. create_model('deeplabv3plus_xception65'))."
            )
        if args["output_stride"] != output_stride:
            raise ValueError(
                f"{name} pools {output_stride.bit_length() - 1} times: its output_stride is "
                f"{output_stride}; got output_stride={args['output_stride']!r}: remove it."
            )
        for key in ("filters", "kernel_size"):
            if key in args:
                value = args[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"{name}: {key} must be a positive integer (the paper: 64 filters, "
                        f"kernel 7); got {value!r}."
                    )
        return args

    return resolve


register_architecture(
    Architecture(
        name="segnet",
        graph=segnet_graph,
        default_backbone=None,
        default_output_stride=32,
        resolve=_resolve("segnet", 32),
        preprocessing="bgr",
        upsample=None,
        description="SegNet (Badrinarayanan et al. 2017): VGG-16+BN encoder, indexed unpooling",
    )
)
register_architecture(
    Architecture(
        name="segnet_basic",
        graph=segnet_basic_graph,
        options={"filters": 64, "kernel_size": 7},
        default_backbone=None,
        default_output_stride=16,
        resolve=_resolve("segnet_basic", 16),
        preprocessing="bgr",
        upsample=None,
        description="SegNet-Basic (Badrinarayanan et al. 2017): LRN, 4 x 7x7/64 enc/dec",
    )
)

register_model("segnet", "segnet", num_classes=11)
register_model("segnet_basic", "segnet_basic", num_classes=11)

__all__ = ["LocalResponseNormalization", "segnet_basic_graph", "segnet_graph"]
