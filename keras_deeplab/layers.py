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
  Only oneDNN builds of TF run a dilated `DepthwiseConv2dNative` and the
  gradients of a dilated `Conv2D` (Eigen's CPU kernels, used on CPUs without
  AVX-512 and on macOS, raise "does not support dilations"): where the probe
  `native_dilation()` fails, the layers run space-to-batch instead, and the
  TFLite export forces the native ops (`force_native_dilation`), which the
  TFLite kernels do support. The gradient kernels of `DepthwiseConv2dNative`
  ignore the dilation everywhere, so its gradient is always the space-to-batch
  one (`_depthwise_exact_gradient`).
* `BatchNormalization`: Keras' BatchNorm whose training step runs as one fused
  kernel (`FusedBatchNormV3` and its gradient) instead of about ten element-wise
  ops; the official implementation used the fused kernel too (`slim.batch_norm`).
* `Preprocessing`: RGB in [0, 255] to the backbone's input convention.
"""

import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "keras_deeplab"
_NATIVE_DILATION = {}  # (conv kind, device type, dtype) -> whether TF runs it dilated there
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


def _native_op(kind, x, kernel, strides, padding, rate):
    op = tf.raw_ops.Conv2D if kind == "conv" else tf.raw_ops.DepthwiseConv2dNative
    return op(input=x, filter=kernel, strides=strides, padding=padding, dilations=[1, *rate, 1])


def _space_to_batch_op(kind, x, kernel, strides, padding, rate):
    """The dilated conv as TF's space-to-batch composition (Keras' own path)."""
    if kind == "conv":
        return tf.nn.convolution(x, kernel, strides=strides[1:3], padding=padding, dilations=rate)
    return tf.nn.depthwise_conv2d(x, kernel, strides=strides, padding=padding, dilations=rate)


def _probe_dilation(kind, dtype):
    """Whether the native dilated op is right here: its forward (and for `conv` both
    gradient ops; depthwise gradients never come from the native kernels, see
    `native_dilation`) against rate-1 ops with the zero-inserted 5x5 kernel, which compute
    the same function. Raw ops only: `init_scope` pauses gradient tapes."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 9, 9, 2)), dtype)
    small = rng.normal(size=(3, 3, 2, 2 if kind == "conv" else 1))
    spread = np.zeros((5, 5, *small.shape[2:]))
    spread[::2, ::2] = small
    kernel, spread = tf.constant(small, dtype), tf.constant(spread, dtype)
    name = "Conv2D" if kind == "conv" else "DepthwiseConv2dNative"
    options = {"strides": [1, 1, 1, 1], "padding": "SAME"}
    dilated, plain = {**options, "dilations": [1, 2, 2, 1]}, {**options, "dilations": [1] * 4}
    op = getattr(tf.raw_ops, name)
    expected = op(input=x, filter=spread, **plain)
    pairs = [(op(input=x, filter=kernel, **dilated), expected)]
    if kind == "conv":
        dy = tf.constant(rng.normal(size=expected.shape), dtype)
        grad_x, grad_k = (
            getattr(tf.raw_ops, name + suffix) for suffix in ("BackpropInput", "BackpropFilter")
        )
        pairs.append(
            (
                grad_x(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, **dilated),
                grad_x(input_sizes=tf.shape(x), filter=spread, out_backprop=dy, **plain),
            )
        )
        full = grad_k(input=x, filter_sizes=tf.shape(spread), out_backprop=dy, **plain)
        pairs.append(
            (
                grad_k(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, **dilated),
                full[::2, ::2],
            )
        )
    tolerance = 1e-3 if dtype == tf.float32 else 0.1  # a wrong dilation is off by O(1)
    return all(
        np.allclose(
            np.asarray(tf.cast(a, tf.float32)),
            np.asarray(tf.cast(b, tf.float32)),
            rtol=tolerance,
            atol=tolerance,
        )
        for a, b in pairs
    )


def native_dilation(kind="depthwise", dtype="float32"):
    """True when this TF build computes a dilated `Conv2D` (`kind="conv"`: forward and
    both gradients) or `DepthwiseConv2dNative` (`kind="depthwise"`: forward) natively and
    correctly in `dtype` on the default device, checked once per (kind, device, dtype).

    oneDNN CPU builds do; TF's Eigen CPU kernels (CPUs without AVX-512, where oneDNN is off
    unless `TF_ENABLE_ONEDNN_OPTS=1`, and macOS) raise on dilated depthwise convs and on
    the gradients of dilated convs. The gradient kernels of `DepthwiseConv2dNative` ignore
    the dilation on every CPU build measured (no error, wrong values), so
    `DepthwiseConv2D` never uses them (see `_depthwise_exact_gradient`)."""
    if kind not in ("conv", "depthwise"):
        raise ValueError(f"kind must be 'conv' or 'depthwise'; got {kind!r}.")
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    dtype = tf.as_dtype(dtype)
    key = (kind, device, dtype.name)
    if key not in _NATIVE_DILATION:
        with tf.init_scope():
            try:
                _NATIVE_DILATION[key] = _probe_dilation(kind, dtype)
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
                _NATIVE_DILATION[key] = False
    return _NATIVE_DILATION[key]


def _depthwise_exact_gradient(x, kernel, strides, padding, rate):
    """Native dilated depthwise forward; the gradient of the space-to-batch form (its
    forward recomputed), because TF's `DepthwiseConv2dNativeBackpropInput/Filter` kernels
    ignore `dilations` (measured: TF 2.21 CPU, oneDNN on and off)."""

    @tf.custom_gradient
    def depthwise(x, kernel):
        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = _space_to_batch_op("depthwise", x, kernel, strides, padding, rate)
            return tape.gradient(y, [x, kernel], output_gradients=dy)

        return _native_op("depthwise", x, kernel, strides, padding, rate), grad

    return depthwise(x, kernel)


@contextlib.contextmanager
def force_native_dilation():
    """Trace dilated convs as the native ops whatever this machine runs: for graphs that
    are converted (TFLite), not executed here."""
    previous = getattr(_FORCE_NATIVE, "on", False)
    _FORCE_NATIVE.on = True
    try:
        yield
    finally:
        _FORCE_NATIVE.on = previous


def _conv_args(layer):
    """`(strides, padding, rate)` of a conv layer, as `_native_op` / `_space_to_batch_op` take them."""
    return [1, *layer.strides, 1], _tf_padding(layer), tuple(layer.dilation_rate)


def _dilated(layer):
    return max(layer.dilation_rate) > 1


def _forced():
    return getattr(_FORCE_NATIVE, "on", False)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that runs dilation as the native dilated TF conv where TF has
    the kernels (see the module docstring)."""

    def convolution_op(self, inputs, kernel):
        args = _conv_args(self)
        kernel = tf.cast(kernel, inputs.dtype)
        if _dilated(self) and not _forced() and not native_dilation("conv", inputs.dtype):
            return _space_to_batch_op("conv", inputs, kernel, *args)
        return _native_op("conv", inputs, kernel, *args)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that runs dilation natively (no space-to-batch)
    where TF has the kernel, with exact gradients (see the module docstring)."""

    def _convolve(self, inputs, kernel):
        args = _conv_args(self)
        if not _dilated(self) or _forced():
            return _native_op("depthwise", inputs, kernel, *args)
        if native_dilation("depthwise", inputs.dtype):
            return _depthwise_exact_gradient(inputs, kernel, *args)
        return _space_to_batch_op("depthwise", inputs, kernel, *args)

    def call(self, inputs):
        outputs = self._convolve(inputs, tf.cast(self.kernel, inputs.dtype))
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


# oneDNN's bfloat16 BatchNorm (forward + gradient, channels-last) runs in blocks of 16
# channels: at 32-512 channels it took 0.50-0.74x the time of the float32 kernel on a cast
# copy, at 8, 12, 24, 72 or 120 channels 2.7-8.1x (AMX Xeon, batch 32 at 25x25;
# `python -m benchmarks.bf16_batch_norm`, docs/training.md "CPU kernels").
_BF16_BATCH_NORM_BLOCK = 16


def _keeps_half_inputs(dtype, channels):
    """True where the fused BatchNorm kernel runs `dtype` inputs natively and fast: on GPUs
    (cuDNN takes half and bfloat16), and on CPUs with a bfloat16 unit for bfloat16 inputs
    whose channel count is a multiple of 16."""
    from keras_deeplab.precision import cpu_has_bfloat16

    if _on_gpu():
        return True
    return (
        dtype == tf.bfloat16
        and channels is not None
        and channels % _BF16_BATCH_NORM_BLOCK == 0
        and cpu_has_bfloat16()
    )


def _on_gpu():
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
        # Half / bfloat16 inputs stay as they are where the kernel runs them natively (it
        # takes float32 scale and offset and returns float32 statistics: no float32 copy of
        # the activations); elsewhere the float32 kernel on a cast copy is faster.
        channels = inputs.shape[-1]
        half = inputs.dtype in (tf.float16, tf.bfloat16) and _keeps_half_inputs(
            inputs.dtype, channels
        )
        x = inputs if half else tf.cast(inputs, tf.float32)
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
        x = tf.reverse(x, [-1])  # RGB -> BGR; 2.6x faster than x[..., ::-1] (a strided slice)
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
