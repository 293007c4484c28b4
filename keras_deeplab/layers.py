"""Layers shared by every DeepLab model.

All of them are registered Keras serializable objects, so models that use them
save to `.keras` and load back with `safe_mode=True` (no Lambda layers).

* `ResizeBilinear`: the one resize used inside the models. Bilinear with
  `align_corners=True`, as every resize of the official implementation
  (`core/utils.py:resize_bilinear`). Its target size comes from a reference
  tensor or a scale factor, so dynamic spatial sizes survive `model.export()`.
* `Conv2D` / `DepthwiseConv2D`: Keras convolutions whose dilation lowers to the
  native dilated TF op. Keras' own dilated convolutions go through
  space-to-batch, which becomes SPACE_TO_BATCH_ND/BATCH_TO_SPACE_ND in TFLite.
  Only oneDNN builds of TF run a dilated `DepthwiseConv2dNative` (Eigen's CPU
  kernel, used on CPUs without AVX-512 and on macOS, raises "does not support
  dilations"): where the probe `native_dilated_depthwise()` fails, the layer
  runs space-to-batch instead, and the TFLite export forces the native op
  (`force_native_dilation`), which the TFLite kernels do support.
* `BatchNormalization`: Keras' BatchNorm whose training step runs as one fused
  kernel (`FusedBatchNormV3` and its gradient) instead of about ten element-wise
  ops; the official implementation used the fused kernel too (`slim.batch_norm`).
* `Preprocessing`: RGB in [0, 255] to the backbone's input convention.
"""

import contextlib
import threading

import keras
import tensorflow as tf

PACKAGE = "keras_deeplab"
_NATIVE_DEPTHWISE = {}  # device type -> whether a dilated DepthwiseConv2dNative runs there
_FORCE_NATIVE = threading.local()


def scale_dimension(dim, scale):
    """Official `scale_dimension`: `int((dim - 1) * scale + 1)` (works on tensors)."""
    if isinstance(dim, tf.Tensor):
        return tf.cast((tf.cast(dim, tf.float32) - 1.0) * scale + 1.0, tf.int32)
    return int((float(dim) - 1.0) * scale + 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeBilinear(keras.layers.Layer):
    """Align-corners bilinear resize.

    Called as `layer(x)` with `scale` set (the output size is
    `scale_dimension(size, scale)` per spatial axis, as the official multi-scale
    code), or as `layer([x, reference])` to resize `x` to the spatial size of
    `reference`.

    Args:
        scale: optional float scale factor (used when called on one tensor).
        align_corners: True (the official DeepLab / Caffe `Interp` convention); False for
            half-pixel centres, torch's `align_corners=False` (torchvision, CSAIL, mmseg).
    """

    def __init__(self, scale=None, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.scale = None if scale is None else float(scale)
        self.align_corners = bool(align_corners)

    def _target_size(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return tf.shape(inputs[1])[1:3]
        if self.scale is None:
            raise ValueError(f"{self.name}: call ResizeBilinear on [x, reference] or set `scale`.")
        return scale_dimension(tf.shape(inputs)[1:3], self.scale)

    def call(self, inputs):
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        size = self._target_size(inputs)
        y = tf.raw_ops.ResizeBilinear(
            images=x,
            size=size,
            align_corners=self.align_corners,
            half_pixel_centers=not self.align_corners,
        )
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            x_shape, ref_shape = input_shape
            return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])
        h, w = input_shape[1], input_shape[2]
        h = None if h is None else scale_dimension(h, self.scale)
        w = None if w is None else scale_dimension(w, self.scale)
        return (input_shape[0], h, w, input_shape[3])

    def get_config(self):
        config = {**super().get_config(), "scale": self.scale}
        if not self.align_corners:  # files written before the option keep their config
            config["align_corners"] = False
        return config


def _tf_padding(layer):
    return layer.padding.upper()


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that runs dilation as the native dilated TF conv."""

    def convolution_op(self, inputs, kernel):
        return tf.nn.conv2d(
            inputs,
            tf.cast(kernel, inputs.dtype),
            strides=[1, *self.strides, 1],
            padding=_tf_padding(self),
            dilations=[1, *self.dilation_rate, 1],
        )


def _probe_dilated_depthwise():
    x = tf.zeros([1, 5, 5, 1])
    kernel = tf.zeros([3, 3, 1, 1])
    with tf.GradientTape() as tape:  # the two gradient kernels have the same restriction
        tape.watch([x, kernel])
        y = tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=kernel, strides=[1, 1, 1, 1], padding="SAME", dilations=[1, 2, 2, 1]
        )
    tape.gradient(y, [x, kernel])


def native_dilated_depthwise():
    """True when this TF build runs `DepthwiseConv2dNative` with dilation > 1 (and its
    gradients) on the default device: oneDNN CPU builds do, TF's Eigen CPU kernel
    (CPUs without AVX-512, where oneDNN is off by default, and macOS) does not.
    Probed once per device type and cached."""
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    if device not in _NATIVE_DEPTHWISE:
        with tf.init_scope():
            try:
                _probe_dilated_depthwise()
                _NATIVE_DEPTHWISE[device] = True
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
                _NATIVE_DEPTHWISE[device] = False
    return _NATIVE_DEPTHWISE[device]


@contextlib.contextmanager
def force_native_dilation():
    """Trace dilated depthwise convs as the native op whatever this machine runs: for
    graphs that are converted (TFLite), not executed here."""
    previous = getattr(_FORCE_NATIVE, "on", False)
    _FORCE_NATIVE.on = True
    try:
        yield
    finally:
        _FORCE_NATIVE.on = previous


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that runs dilation natively (no space-to-batch)
    where TF has the kernel (see the module docstring)."""

    def _native(self):
        return (
            max(self.dilation_rate) == 1
            or getattr(_FORCE_NATIVE, "on", False)
            or native_dilated_depthwise()
        )

    def call(self, inputs):
        kernel = tf.cast(self.kernel, inputs.dtype)
        if self._native():
            outputs = tf.raw_ops.DepthwiseConv2dNative(
                input=inputs,
                filter=kernel,
                strides=[1, *self.strides, 1],
                padding=_tf_padding(self),
                dilations=[1, *self.dilation_rate, 1],
            )
        else:
            outputs = tf.nn.depthwise_conv2d(
                inputs,
                kernel,
                strides=[1, *self.strides, 1],
                padding=_tf_padding(self),
                dilations=list(self.dilation_rate),
            )
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


def _uncast_half_inputs():
    """True where the fused BatchNorm kernel runs half / bfloat16 inputs natively (GPUs)."""
    return bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training path.

    In training mode Keras 3 computes the batch moments and the normalisation as
    separate element-wise ops (mean, squared difference, mean, multiply, add, and as
    many again in the gradient). With `fused=True` (the default) a 4-D channels-last
    input runs through TF's `FusedBatchNormV3` instead, one oneDNN kernel forward and
    one backward (fused with the following ReLU by TF's graph optimiser); on DeepLabV3+
    resnet50 at 513 px this makes the training step faster (see the README's
    Benchmarks). Semantics are Keras': the output uses the biased batch variance, and
    so does the moving-variance update (the fused kernel returns the unbiased one,
    which is rescaled). Inference mode, masks, renorm, `synchronized=True` and other
    layouts take Keras' own path, unchanged.

    Args:
        fused: use the fused kernel in training mode when possible.
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def _can_fuse(self, inputs, training, mask):
        return (
            self.fused
            and training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        # On GPUs half / bfloat16 inputs stay as they are (cuDNN's kernel takes them with
        # float32 scale and offset and returns float32 statistics: no float32 copy of the
        # activations); on CPUs the float32 kernel is faster (measured on an AMX Xeon, one
        # 2-core run: float32 28 ms, float16 44 ms, bfloat16 92 ms forward + gradient).
        half = inputs.dtype in (tf.float16, tf.bfloat16) and _uncast_half_inputs()
        x = inputs if half else tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.zeros([0]),
            variance=tf.zeros([0]),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        mean, unbiased_variance = tf.cast(mean, tf.float32), tf.cast(unbiased_variance, tf.float32)
        variance = unbiased_variance * (tf.maximum(count - 1.0, 0.0) / count)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}


# Input conventions, each mapping RGB in [0, 255]:
# "symmetric": (2 / 255) * x - 1 (xception, mobilenet, *_beta ResNets; official
#     `core/feature_extractor.py`).
# "caffe": RGB -> BGR and ImageNet BGR mean subtraction, the convention of the
#     Caffe-layout ResNets / VGG-16 and of their keras.applications weights.
# "torch": x / 255, minus the ImageNet RGB mean, divided by its std (torchvision's
#     `Normalize`, the torchvision-layout and deep-stem ResNets).
# "unit": x / 255, any number of channels (U-Net).
# "bgr": RGB -> BGR, values kept in [0, 255] (SegNet-Tutorial feeds raw BGR).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("symmetric", "caffe", "torch", "unit", "bgr")
# The modes defined for any channel count; the others need RGB.
CHANNEL_AGNOSTIC_MODES = ("symmetric", "unit")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ModelSpec(keras.layers.Layer):
    """The last layer of every `SegmentationModel`: passes its input through unchanged and
    carries the model's arguments and properties (JSON text) in its config, so that a copy
    of the graph (`keras.models.clone_model`) is a `SegmentationModel` again. No weights, no
    op in SavedModel or TFLite graphs."""

    def __init__(self, model_config, model_spec, **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config
        self.model_spec = model_spec

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "model_config": self.model_config,
            "model_spec": self.model_spec,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class Preprocessing(keras.layers.Layer):
    """Maps RGB values in [0, 255] to a backbone's input convention. No weights.

    Args:
        mode: `"symmetric"` (to [-1, 1]), `"caffe"` (BGR, mean subtracted), `"torch"`
            (ImageNet mean/std on [0, 1] RGB), `"unit"` (to [0, 1]) or `"bgr"` (BGR, raw).
    """

    def __init__(self, mode="symmetric", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode {mode!r}; expected one of {PREPROCESSING_MODES}."
            )
        self.mode = mode

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.mode == "symmetric":
            return x * (2.0 / 255.0) - 1.0
        if self.mode == "unit":
            return x * (1.0 / 255.0)
        if self.mode == "torch":
            mean = tf.constant(TORCH_RGB_MEAN, dtype=x.dtype)
            scale = tf.constant([1.0 / (255.0 * s) for s in TORCH_RGB_STD], dtype=x.dtype)
            return x * scale - mean / tf.constant(TORCH_RGB_STD, dtype=x.dtype)
        x = x[..., ::-1]
        if self.mode == "bgr":
            return x
        return x - tf.constant(CAFFE_BGR_MEAN, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def fixed_padding(x, kernel_size, rate=1, name=None):
    """Official `fixed_padding`: pad so a VALID strided conv is input-size independent."""
    effective = kernel_size + (kernel_size - 1) * (rate - 1)
    total = effective - 1
    begin = total // 2
    end = total - begin
    return keras.layers.ZeroPadding2D(((begin, end), (begin, end)), name=name)(x)


def conv2d_same(
    x,
    filters,
    kernel_size,
    stride=1,
    rate=1,
    name=None,
    use_bias=False,
    **kwargs,
):
    """Official `conv2d_same`: SAME padding at stride 1, fixed padding + VALID when strided."""
    if stride == 1:
        return Conv2D(
            filters,
            kernel_size,
            padding="same",
            dilation_rate=rate,
            use_bias=use_bias,
            name=name,
            **kwargs,
        )(x)
    x = fixed_padding(x, kernel_size, rate, name=None if name is None else f"{name}_pad")
    return Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="valid",
        dilation_rate=rate,
        use_bias=use_bias,
        name=name,
        **kwargs,
    )(x)
