"""FCN-32s, FCN-16s, FCN-8s and all-at-once FCN-8s on VGG-16, as the reference Caffe nets.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (arXiv:1411.4038) and PAMI 2016 (arXiv:1605.06211); the nets of
`shelhamer/fcn.berkeleyvision.org` (`voc-fcn{32,16,8}s`, `voc-fcn8s-atonce`).

The whole graph is FCN's own (architecture `"fcn"`, no registered backbone):

* VGG-16 trunk: thirteen 3x3 convs with bias + ReLU, `conv1_1` with pad 100, 2x2/2
  max-pools with Caffe's ceil rounding (`"same"` max-pooling: the last window is clipped,
  exactly Caffe's and torch's `ceil_mode=True`);
* `fc6` 7x7 VALID conv to `fc_channels` (4096) + ReLU + dropout, `fc7` 1x1 + ReLU +
  dropout, `score_fr` 1x1 to the classes, zero-initialised (Caffe's default filler);
* skips (16s, 8s): `score_pool4` / `score_pool3` 1x1 convs (zero-initialised) on pool4 /
  pool3, cropped (offsets 5 and 9) and summed with the upsampled scores;
* fixed per-class bilinear `Conv2DTranspose` upsamplers (`lr_mult: 0`: non-trainable;
  32s `upscore` 64/32; 16s `upscore2` 4/2 and `upscore16` 32/16; 8s `upscore2` 4/2,
  `upscore_pool4` 4/2, `upscore8` 16/8) and the final crop (19 / 27 / 31), so the output
  has the input's size for every H, W >= 1;
* at-once FCN-8s: pool4 times 0.01 and pool3 times 0.0001 before their score convs
  (constant multiplies, as torchfcn; Caffe's fixed `Scale` blobs hold the same numbers).

Input: RGB in [0, 255], normalised inside by the package's `"caffe"` mode (RGB -> BGR,
minus the BGR mean (103.939, 116.779, 123.68) of keras.applications VGG16). The reference
FCN data layers (and torchfcn) subtract (104.00699, 116.66877, 122.67892): 0.07, 0.11 and
1.00 less / more per channel, a constant input shift to keep in mind with the official
weights (`include_preprocessing=False` and your own normalisation reproduce it exactly).

Layer names: `block1_conv1` ... `block5_conv3` as `keras.applications.VGG16` (its ImageNet
weights load by name), `fc6`, `fc7`, `score_fr`, `score_pool4`, `score_pool3`,
`upscore*`; `fcn_vgg16_from_keras_applications` copies a `VGG16(include_top=True)`'s convs
and reshapes its `fc1` / `fc2` into `fc6` / `fc7` (the reference `surgery.transplant`).

Example:
    ```python
    import keras_deeplab

    model = keras_deeplab.create_model("fcn8s", num_classes=21)
    model(images).shape  # (batch, H, W, 21) for any H, W >= 1
    ```
"""

import keras
import numpy as np

from keras_deeplab.architectures.fcn_layers import CropToReference, bilinear_upsampling
from keras_deeplab.layers import Conv2D
from keras_deeplab.registry import Architecture, register_architecture, register_model

# (filters, number of 3x3 convs) of VGG-16's five blocks.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VARIANTS = ("32s", "16s", "8s", "8s_atonce")
# The reference crops (Caffe `Crop` offsets on axis 2).
CROP_SCORE = {"32s": 19, "16s": 27, "8s": 31, "8s_atonce": 31}
CROP_POOL4 = 5
CROP_POOL3 = 9
# All-at-once FCN-8s: the fixed scales of pool4 and pool3 (voc-fcn8s-atonce/net.py).
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001


def _vgg16_trunk(x, fc_channels, dropout):
    """conv1_1 (pad 100) ... pool5, fc6, fc7: `(fc7 output, pool3, pool4)`."""
    x = keras.layers.ZeroPadding2D(100, name="conv1_1_pad")(x)
    taps = {}
    for b, (filters, convs) in enumerate(VGG16_BLOCKS):
        for c in range(convs):
            x = Conv2D(
                filters,
                3,
                padding="valid" if b == 0 and c == 0 else "same",
                activation="relu",
                name=f"block{b + 1}_conv{c + 1}",
            )(x)
        # 2x2/2 with the last window clipped at the border: Caffe's ceil-mode pooling.
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{b + 1}")(x)
        taps[b + 1] = x
    x = Conv2D(fc_channels, 7, padding="valid", activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
    x = Conv2D(fc_channels, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="fc7_dropout")(x)
    return x, taps[3], taps[4]


def _score(x, num_classes, name):
    """A zero-initialised 1x1 score conv with bias (Caffe's default constant-0 filler)."""
    return Conv2D(num_classes, 1, kernel_initializer="zeros", bias_initializer="zeros", name=name)(
        x
    )


def fcn_graph(x, args):
    """The FCN graph on the preprocessed image `x`: logits at the size of `x`."""
    image = x
    variant, num_classes = args["variant"], args["num_classes"]
    fc7, pool3, pool4 = _vgg16_trunk(x, args["fc_channels"], args["dropout"])
    score = _score(fc7, num_classes, "score_fr")
    if variant == "32s":
        score = bilinear_upsampling(num_classes, 64, 32, name="upscore")(score)
        return CropToReference(CROP_SCORE[variant], name="score")([score, image])

    if variant == "8s_atonce":
        pool4 = keras.layers.Rescaling(ATONCE_POOL4_SCALE, name="scale_pool4")(pool4)
        pool3 = keras.layers.Rescaling(ATONCE_POOL3_SCALE, name="scale_pool3")(pool3)
    upscore2 = bilinear_upsampling(num_classes, 4, 2, name="upscore2")(score)
    score_pool4 = _score(pool4, num_classes, "score_pool4")
    score_pool4c = CropToReference(CROP_POOL4, name="score_pool4c")([score_pool4, upscore2])
    fuse = keras.layers.Add(name="fuse_pool4")([upscore2, score_pool4c])
    if variant == "16s":
        fuse = bilinear_upsampling(num_classes, 32, 16, name="upscore16")(fuse)
        return CropToReference(CROP_SCORE[variant], name="score")([fuse, image])

    upscore_pool4 = bilinear_upsampling(num_classes, 4, 2, name="upscore_pool4")(fuse)
    score_pool3 = _score(pool3, num_classes, "score_pool3")
    score_pool3c = CropToReference(CROP_POOL3, name="score_pool3c")([score_pool3, upscore_pool4])
    fuse = keras.layers.Add(name="fuse_pool3")([upscore_pool4, score_pool3c])
    fuse = bilinear_upsampling(num_classes, 16, 8, name="upscore8")(fuse)
    return CropToReference(CROP_SCORE[variant], name="score")([fuse, image])


def _resolve(args):
    """Checks the FCN options; FCN builds its own VGG-16 trunk (no backbone argument)."""
    if args["backbone"] is not None:
        raise ValueError(
            f"FCN ({args['variant']}) builds its own VGG-16 trunk (conv1_1 pad 100, ceil-mode "
            f"2x2 pools, fc6/fc7 as convs), so backbone must be None; got "
            f"backbone={args['backbone']!r}. For an FCN head on a ResNet use 'fcn_resnet50' or "
            f"'fcn_resnet101'."
        )
    if args["variant"] not in VARIANTS:
        raise ValueError(
            f"FCN variant must be one of {', '.join(map(repr, VARIANTS))}; got "
            f"variant={args['variant']!r}."
        )
    if args["output_stride"] != 32:
        raise ValueError(
            f"FCN's VGG-16 trunk has output stride 32 (five 2x2 pools; the skips fuse "
            f"pool4/pool3 scores, they do not change the trunk), so output_stride must be 32 "
            f"or None; got output_stride={args['output_stride']!r}."
        )
    channels = args["fc_channels"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"fc_channels must be a positive integer (4096 as VGG-16's fc layers); got "
            f"fc_channels={channels!r}."
        )
    dropout = args["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1) (0.5 in FCN); got {dropout!r}.")
    return {**args, "dropout": float(dropout)}


register_architecture(
    Architecture(
        name="fcn",
        graph=fcn_graph,
        options={"variant": "8s", "fc_channels": 4096, "dropout": 0.5},
        default_backbone=None,
        default_output_stride=32,
        resolve=_resolve,
        preprocessing="caffe",
        upsample=None,
        description="FCN-32s/16s/8s (VGG-16, Caffe reference nets: pad 100, crops, "
        "fixed bilinear deconvolutions)",
    )
)

register_model("fcn32s", "fcn", variant="32s")
register_model("fcn16s", "fcn", variant="16s")
register_model("fcn8s", "fcn", variant="8s")
register_model("fcn8s_atonce", "fcn", variant="8s_atonce")


def fcn_vgg16_from_keras_applications(model, vgg):
    """Copies `keras.applications.VGG16(include_top=True)` weights into an FCN model.

    The thirteen convs load by name (`block1_conv1` ... `block5_conv3`); `fc1` (25088 x 4096)
    is reshaped to the 7x7x512x4096 `fc6` kernel and `fc2` to the 1x1 `fc7` kernel (the
    reference `surgery.transplant`; Keras flattens `pool5` in (H, W, C) order, the conv
    kernel's order). The score layers stay zero-initialised, the upsamplers bilinear.

    Args:
        model: an FCN `SegmentationModel` (e.g. `create_model("fcn32s")`, `fc_channels=4096`).
        vgg: `keras.applications.VGG16(include_top=True, weights="imagenet")` (or any
            weights, e.g. `weights=None` for a test).

    Returns:
        `model`, for chaining.

    Example:
        ```python
        vgg = keras.applications.VGG16(include_top=True, weights="imagenet")
        model = fcn_vgg16_from_keras_applications(create_model("fcn32s"), vgg)
        ```
    """
    if getattr(model, "architecture", None) != "fcn":
        raise ValueError(
            f"fcn_vgg16_from_keras_applications: model must be an FCN SegmentationModel "
            f"(create_model('fcn32s'), ...); got {getattr(model, 'name', model)!r}."
        )
    names = {layer.name for layer in vgg.layers}
    if "fc1" not in names or "fc2" not in names:
        raise ValueError(
            "fcn_vgg16_from_keras_applications: vgg has no fc1/fc2 layers; build it with "
            "keras.applications.VGG16(include_top=True) (fc6/fc7 are its fc1/fc2 reshaped)."
        )
    for b, (_, convs) in enumerate(VGG16_BLOCKS):
        for c in range(convs):
            name = f"block{b + 1}_conv{c + 1}"
            model.get_layer(name).set_weights(vgg.get_layer(name).get_weights())
    for fc, conv in (("fc1", "fc6"), ("fc2", "fc7")):
        kernel, bias = vgg.get_layer(fc).get_weights()
        target = model.get_layer(conv)
        shape = tuple(target.kernel.shape)
        if int(np.prod(shape)) != kernel.size or shape[-1] != kernel.shape[-1]:
            raise ValueError(
                f"fcn_vgg16_from_keras_applications: {fc} {kernel.shape} does not reshape to "
                f"{conv} {shape}; build the FCN with fc_channels=4096 and an input that gives "
                f"pool5 7x7x512 in VGG16 (224x224)."
            )
        target.set_weights([kernel.reshape(shape), bias])
    return model


__all__ = ["VARIANTS", "fcn_graph", "fcn_vgg16_from_keras_applications"]
