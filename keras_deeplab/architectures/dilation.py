"""Dilation8 (Yu & Koltun): the dilated VGG-16 front end + the context module.

Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016,
arXiv:1511.07122; layers as the authors' `fyu/dilation` (`network.py`
`build_frontend_vgg`, `models/dilation8_{pascal_voc,camvid}_deploy.prototxt`, `predict.py`).

Architecture `"dilation"` (a whole-model `graph`, no registered backbone):

* input: reflection padding of 186 pixels on each side (OpenCV `BORDER_REFLECT_101`, as
  `predict.py` pads before the net; here it is inside the model, so `model(images)` and the
  Segmenter see an ordinary model; any input size works, the reflection repeats when the
  image is smaller than 187 pixels);
* front end: VGG-16 with unpadded ("valid") 3x3 convolutions, 2x2 max pools 1-3 (Caffe's
  ceil rounding), pool4 and pool5 removed, conv5_x at dilation 2, fc6 7x7 dilation 4 ->
  4096, fc7 1x1 -> 4096 (ReLU, dropout 0.5 each), `final` 1x1 -> C (std 0.001): an
  `H x W` image gives `ceil(H/8) x ceil(W/8)` class scores (the deploy's 900 -> 66 for a
  528-pixel tile plus its margins);
* context module (`context="large"` for VOC, `"basic"` for CamVid, None: front end only;
  see `keras_deeplab.heads.context`);
* output: the scores zoomed 8x by bilinear interpolation sampling the label map at
  `h / 8` (`util.interp_map`: TF's legacy `align_corners=False, half_pixel_centers=False`
  resize, computed here as an align-corners resize of the edge-extended scores), cropped
  to the input size. The VOC and CamVid deploys upsample outside the net
  this way; only the Cityscapes deploy has an in-net fixed bilinear deconvolution.

Head `"context_module"` on the package's backbones: architecture `"context"` (the backbone,
a 1x1 classifier, the module), e.g. `context_mobilenetv2`.

Preprocessing is `"caffe"` (BGR minus the ImageNet mean of keras.applications' VGG-16);
the authors subtract their datasets' means (VOC BGR 102.93, 111.36, 116.52).

Example:
    ```python
    model = keras_deeplab.create_model("dilation8_voc")  # 141,149,720 parameters
    model = keras_deeplab.create_model("context_mobilenetv2", context="large")
    ```
"""

import keras
import tensorflow as tf

from keras_deeplab.heads import common  # noqa: F401 - registers the "logits" head
from keras_deeplab.heads.context import check_context, context_module
from keras_deeplab.layers import PACKAGE, Conv2D
from keras_deeplab.registry import Architecture, register_architecture, register_model

LABEL_MARGIN = 186  # predict.py `label_margin`
ZOOM = 8
# (filters, number of 3x3 convs, dilation) of blocks 1-5; pools follow blocks 1-3 only.
FRONTEND_BLOCKS = ((64, 2, 1), (128, 2, 1), (256, 3, 1), (512, 3, 1), (512, 3, 2))


def reflect_101_indices(size, pad):
    """Source indices of `BORDER_REFLECT_101` padding by `pad` of an axis of `size` (a
    scalar int tensor): `gfedcb|abcdefgh|gfedcba`, repeating for any `pad`."""
    period = tf.maximum(2 * (size - 1), 1)
    index = tf.math.floormod(tf.range(-pad, size + pad), period)
    return tf.where(index < size, index, period - index)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReflectionPadding(keras.layers.Layer):
    """Pads H and W by `padding` on each side, mirrored without repeating the edge pixel
    (OpenCV `BORDER_REFLECT_101`, TF's `"REFLECT"`), for any image size (the reflection
    repeats when `padding >= size`, as OpenCV's).

    Example:
        >>> ReflectionPadding(2)(np.arange(3.0).reshape(1, 1, 3, 1))[0, 2, :, 0]
        # [2, 1, 0, 1, 2, 1, 0]
    """

    def __init__(self, padding, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        shape = tf.shape(inputs)
        x = tf.gather(inputs, reflect_101_indices(shape[1], self.padding), axis=1)
        return tf.gather(x, reflect_101_indices(shape[2], self.padding), axis=2)

    def compute_output_shape(self, input_shape):
        grow = [None if d is None else d + 2 * self.padding for d in input_shape[1:3]]
        return (input_shape[0], *grow, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Zoom(keras.layers.Layer):
    """`[scores, reference]` -> the scores upsampled `factor` times, cropped to the
    reference's H x W: output pixel `h` samples the scores bilinearly at `h / factor`, the
    last row and column clamped (the Dilation `util.interp_map`).

    Computed as an align-corners resize (the package's one TFLite resize convention) of the
    scores with their last row and column repeated: `n + 1` samples to `factor * n + 1`
    puts output `h` at `h / factor` exactly.
    """

    def __init__(self, factor=ZOOM, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        x, reference = inputs
        x = tf.concat([x, x[:, -1:]], axis=1)
        x = tf.concat([x, x[:, :, -1:]], axis=2)
        size = (tf.shape(x)[1:3] - 1) * self.factor + 1
        y = tf.raw_ops.ResizeBilinear(
            images=x, size=size, align_corners=True, half_pixel_centers=False
        )
        target = tf.shape(reference)[1:3]
        return tf.cast(y[:, : target[0], : target[1]], x.dtype)

    def compute_output_shape(self, input_shape):
        x_shape, reference_shape = input_shape
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def frontend(x, num_classes, dropout=0.5):
    """The Dilation front end on a margin-padded image: class scores at 1/8 (`final`).

    Layer names: `block{b}_conv{c}` (keras.applications VGG-16's), `pool1`-`pool3`, `fc6`,
    `fc7`, `final`.
    """
    for b, (filters, convs, rate) in enumerate(FRONTEND_BLOCKS):
        for c in range(convs):
            x = Conv2D(
                filters,
                3,
                padding="valid",
                dilation_rate=rate,
                activation="relu",
                name=f"block{b + 1}_conv{c + 1}",
            )(x)
        if b < 3:  # Caffe ceil rounding = TF "same" for 2x2/2 max pooling
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{b + 1}")(x)
    x = Conv2D(4096, 7, padding="valid", dilation_rate=4, activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
    x = Conv2D(4096, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="fc7_dropout")(x)
    return Conv2D(
        num_classes,
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        name="final",
    )(x)


def dilation_graph(x, args):
    """Preprocessed image -> logits at the input size (`Architecture.graph`)."""
    padded = ReflectionPadding(LABEL_MARGIN, name="label_margin")(x)
    y = frontend(padded, args["num_classes"], args["dropout"])
    if args["context"] is not None:
        y = context_module(y, args["num_classes"], args["context"])
    return Zoom(ZOOM, name="zoom")([y, x])


def _check_dropout(args):
    dropout = args["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), e.g. 0.5; got {dropout!r}.")
    return float(dropout)


def _resolve_dilation(args):
    if args["backbone"] is not None:
        raise ValueError(
            "dilation has its own front end (VGG-16 with valid convolutions, pool4/pool5 "
            f"removed); it takes no backbone: pass backbone=None, got {args['backbone']!r}. "
            "For the context module on a backbone use create_model('context_mobilenetv2', "
            "backbone=...)."
        )
    if args["output_stride"] != ZOOM:
        raise ValueError(
            f"dilation's front end has output stride {ZOOM} only; got "
            f"output_stride={args['output_stride']!r}. Pass output_stride=None or 8."
        )
    check_context(args["context"], allow_none=True)
    return {**args, "dropout": _check_dropout(args)}


def _resolve_context(args):
    check_context(args["context"])
    return args


register_architecture(
    Architecture(
        name="dilation",
        graph=dilation_graph,
        options={"context": "large", "dropout": 0.5},
        default_output_stride=ZOOM,
        resolve=_resolve_dilation,
        preprocessing="caffe",
        upsample=None,
        description="Dilation8: dilated VGG-16 front end + context module (Yu & Koltun)",
    )
)
register_architecture(
    Architecture(
        name="context",
        heads=lambda args: ("logits", "context_module"),
        options={"context": "basic"},
        default_backbone="mobilenetv2",
        default_output_stride=8,
        resolve=_resolve_context,
        description="a backbone, a 1x1 classifier and Yu & Koltun's context module",
    )
)

register_model("dilation8_voc", "dilation", context="large")
register_model("dilation8_camvid", "dilation", context="basic", num_classes=11)
register_model("context_mobilenetv2", "context", backbone="mobilenetv2", context="basic")
