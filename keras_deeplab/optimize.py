"""Inference-time graph optimisations: BatchNorm folding, fast dilated depthwise, bf16.

* `fold_batch_norm(model)`: a new functional model in which every `Conv2D` /
  `DepthwiseConv2D` whose only consumer is a `BatchNormalization` becomes one convolution
  with a bias (the BN's inference statistics folded into kernel and bias). Nested
  functional models (the backbones) are folded recursively and stay nested, so layer and
  sub-model names are kept (the BN layers disappear). The result is for inference only:
  its convolutions no longer have batch statistics to train.
* `SpaceToBatchDepthwiseConv2D`: depthwise convs dilated at rate >= 8 (the separable ASPP
  branches of DeepLabV3+) through space-to-batch, which oneDNN runs 5-10x faster than the
  native dilated kernel (the profile of DeepLabV3+ resnet50 at 513 px showed the two
  rate-12/18 ASPP depthwise convs taking 70 ms of about 450 ms for 0.1% of the MACs).
* `MaximumReLU`: a ReLU computed as `maximum(x, 0)`, put in place of each plain ReLU whose
  input is a residual sum that also feeds something else (Xception's pre-activation units:
  `add -> relu -> separable conv` and `add -> next add`). TF 2.21's CPU graph optimiser
  (grappler's remapper) tries to fuse `conv -> BiasAdd -> Add -> Relu` there although the
  `Add` has a second consumer, fails ("remapper failed: ... fanout 'add_1' exist for missing
  node 'add'") and then drops every fusion of the graph: no convolution gets its bias or
  ReLU fused. `Maximum` is not a fusable activation, so the remapper leaves those sums alone
  and fuses everything else; the ReLU itself costs one pass either way.
* `with_dtype_policy(model, "mixed_bfloat16")`: the same graph rebuilt with another Keras
  dtype policy (weights copied; variables stay float32, compute in bfloat16), output cast
  back to float32. `optimize_for_inference(..., dtype_policy="mixed_bfloat16")` goes one step
  further for its convolutions: their variables are stored in bfloat16 (the values the mixed
  policy would cast them to at every call), so the graph has no weight casts. Useful on CPUs with AVX512_BF16 / AMX (`cpu_has_bf16()`).
* `optimize_for_inference(model, fold=True, dtype_policy=None, space_to_batch=True)`: all.

Folding removes two full-tensor element-wise passes (multiply, add) per convolution; how
much that buys on a given machine is measured by `python -m benchmarks.run` (see the
README's Benchmarks section). Numerically the folded model equals the original up to
float rounding (tests check 1e-4 on small models of every family).

Example:

```python
import keras_deeplab
from keras_deeplab.optimize import optimize_for_inference

model = keras_deeplab.create_model("deeplabv3plus_resnet50", num_classes=21)
fast = optimize_for_inference(model)  # same outputs (float rounding), faster on CPU
fastest = optimize_for_inference(model, dtype_policy="mixed_bfloat16")  # bf16 CPUs
```
"""

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab import _compat
from keras_deeplab import layers as deeplab_layers

FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
# Dilated depthwise convs at this rate or more run through space-to-batch (see below).
SPACE_TO_BATCH_MIN_RATE = 8


@keras.saving.register_keras_serializable(package=deeplab_layers.PACKAGE)
class SpaceToBatchDepthwiseConv2D(deeplab_layers.DepthwiseConv2D):
    """Dilated depthwise conv computed as space-to-batch + dense depthwise + batch-to-space.

    TF's native dilated `DepthwiseConv2dNative` (oneDNN) is pathologically slow at large
    rates: on a 33x33x2048 map (DeepLabV3+ ASPP at 513 px) a 3x3 depthwise conv takes
    28 ms at rate 12 against 4.6 ms through space-to-batch, and 150 ms against 13 ms on
    65x65x2048 (1025 px); at rate 6 native is faster. Same result up to float rounding.
    Inference graphs only (TFLite export keeps the native op: no SPACE_TO_BATCH_ND there).
    """

    def _convolve(self, inputs, kernel):
        args = deeplab_layers._conv_args(self)
        return deeplab_layers._space_to_batch_op("depthwise", inputs, kernel, *args)


@keras.saving.register_keras_serializable(package=deeplab_layers.PACKAGE)
class MaximumReLU(keras.layers.ReLU):
    """`ReLU` as `maximum(x, 0)` (same values; see the module docstring for why). Inference
    graphs only: the TFLite export keeps RELU."""

    def call(self, inputs):
        return tf.maximum(inputs, tf.zeros([], inputs.dtype))


def shared_sum_relus(functional):
    """Names of the plain ReLU layers of one graph whose input is an `Add` output that also
    feeds another layer or is a model output (the sums `MaximumReLU` replaces)."""
    nodes, producer, consumers, outputs = _graph_links(functional)
    names = set()
    for node in nodes:
        relu = node.operation
        if type(relu) is not keras.layers.ReLU or len(node.input_tensors) != 1:
            continue
        if relu.max_value is not None or relu.negative_slope or relu.threshold:
            continue
        source = node.input_tensors[0]
        add = producer.get(id(source))
        if add is None or not isinstance(add.operation, keras.layers.Add):
            continue
        if consumers.get(id(source), 0) > 1 or id(source) in outputs:
            names.add(relu.name)
    return names


def _uses_space_to_batch(layer):
    return (
        isinstance(layer, keras.layers.DepthwiseConv2D)
        and type(layer) in (deeplab_layers.DepthwiseConv2D, keras.layers.DepthwiseConv2D)
        and max(layer.dilation_rate) >= SPACE_TO_BATCH_MIN_RATE
        and tuple(layer.strides) == (1, 1)
        and layer.data_format == "channels_last"
    )


def cpu_has_bf16():
    """True when /proc/cpuinfo lists a native bfloat16 unit (AVX512_BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


def _graph_links(functional):
    """`(nodes, producer, consumers, outputs)` of one graph: its nodes, the node producing
    each tensor and the number of calls consuming it (by `id`), and the ids of its outputs."""
    nodes = _compat.graph_nodes(functional)
    producer, consumers = {}, {}
    for node in nodes:
        for t in node.outputs:
            producer[id(t)] = node
        for t in node.input_tensors:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    outputs = {id(t) for t in keras.tree.flatten(functional.outputs)}
    return nodes, producer, consumers, outputs


def conv_bn_pairs(functional):
    """`{conv layer name: bn layer}` of the foldable Conv -> BatchNorm pairs of one graph.

    A pair folds when the BN (last axis, inference) takes the conv's output, that output
    feeds nothing else and is not a model output, both layers are called once in this graph,
    and the conv has no activation of its own.
    """
    nodes, producer, consumers, outputs = _graph_links(functional)
    calls = {}
    for node in nodes:
        calls[node.operation.name] = calls.get(node.operation.name, 0) + 1
    pairs = {}
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, keras.layers.BatchNormalization) or len(node.input_tensors) != 1:
            continue
        if bn.axis not in (-1, 3) or calls[bn.name] != 1:
            continue
        source = node.input_tensors[0]
        conv_node = producer.get(id(source))
        if conv_node is None:
            continue
        conv = conv_node.operation
        if (
            isinstance(conv, FOLDABLE_CONVS)
            and not isinstance(conv, keras.layers.SeparableConv2D)
            and conv.data_format == "channels_last"
            and _is_linear(conv.activation)
            and calls[conv.name] == 1
            and len(conv_node.outputs) == 1
            and consumers.get(id(source)) == 1
            and id(source) not in outputs
        ):
            pairs[conv.name] = bn
    return pairs


def bn_scale_shift(bn):
    """Per-channel `(scale, shift)` (float64) of a BatchNormalization in inference mode."""
    variance = np.asarray(bn.moving_variance, np.float64)
    scale = 1.0 / np.sqrt(variance + bn.epsilon)
    if bn.scale:
        scale = scale * np.asarray(bn.gamma, np.float64)
    shift = -np.asarray(bn.moving_mean, np.float64) * scale
    if bn.center:
        shift = shift + np.asarray(bn.beta, np.float64)
    return scale, shift


def _layer_config(layer, dtype_policy):
    config = layer.get_config()
    if dtype_policy is not None:
        config["dtype"] = dtype_policy
    return config


_MIXED_TO_PURE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def _inference_weights_policy(layer, dtype_policy):
    """The policy of `layer` in a reduced-precision inference graph: convolutions keep their
    weights in the compute dtype ("bfloat16" for "mixed_bfloat16"). A mixed policy stores
    float32 variables and casts every kernel and bias at every call (about 300 `Cast` ops a
    call in Xception-65); the stored values are the same roundings, so outputs are equal."""
    if isinstance(layer, FOLDABLE_CONVS) and dtype_policy in _MIXED_TO_PURE:
        return _MIXED_TO_PURE[dtype_policy]
    return dtype_policy


def _folded_conv(conv, bn, x, dtype_policy, space_to_batch):
    """Calls on `x` a new conv equal to `bn(conv(.))`; returns its output."""
    scale, shift = bn_scale_shift(bn)
    kernel = np.asarray(conv.kernel, np.float64)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        # kernel [kh, kw, in, multiplier]; output channel c * multiplier + m.
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale  # [kh, kw, in / groups, out]
    bias = bias * scale + shift
    config = _layer_config(conv, dtype_policy)
    config.update(use_bias=True, bias_initializer="zeros", bias_regularizer=None)
    cls = conv.__class__
    if space_to_batch and _uses_space_to_batch(conv):
        cls = SpaceToBatchDepthwiseConv2D
    folded = cls.from_config(config)
    y = folded(x)
    folded.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return y


def _copy_layer(layer, dtype_policy, args, kwargs, cls=None):
    new = (cls or layer.__class__).from_config(_layer_config(layer, dtype_policy))
    y = new(*args, **kwargs)
    new.set_weights(layer.get_weights())
    return y


def _is_logits_resize(layer):
    """The resize of the logits to the input size (`upsampled_logits`, `upsampled_aux`):
    kept in float32 under reduced-precision policies (measured on Google's MobileNetV2 VOC
    model: bfloat16 upsampling costs 0.0024 mIoU on the VOC samples, one resize of time)."""
    return isinstance(layer, deeplab_layers.ResizeBilinear) and layer.name.startswith("upsampled_")


def _rebuild(functional, fold, dtype_policy, space_to_batch, share_layers, cache):
    """A new functional model: `functional`'s graph with the transforms applied.

    Layers no transform touches are shared with `functional` when `share_layers` (else
    copied with their weights); a nested model called several times is rebuilt once.
    """
    pairs = conv_bn_pairs(functional) if fold else {}
    skip = {bn.name for bn in pairs.values()}
    maximum_relus = shared_sum_relus(functional) if space_to_batch else set()

    def call(layer, *args, **kwargs):
        if _compat.is_functional(layer):
            if id(layer) not in cache:
                cache[id(layer)] = _rebuild(
                    layer, fold, dtype_policy, space_to_batch, share_layers, cache
                )
            return cache[id(layer)](*args, **kwargs)
        if layer.name in skip or isinstance(layer, deeplab_layers.ModelSpec):  # new model: own spec
            return args[0]
        # An inference graph (space_to_batch) stores conv weights in the compute dtype.
        policy = _inference_weights_policy(layer, dtype_policy) if space_to_batch else dtype_policy
        if layer.name in pairs:
            return _folded_conv(layer, pairs[layer.name], args[0], policy, space_to_batch)
        if space_to_batch and _uses_space_to_batch(layer):
            return _copy_layer(layer, policy, args, kwargs, SpaceToBatchDepthwiseConv2D)
        if layer.name in maximum_relus:
            return _copy_layer(layer, policy, args, kwargs, MaximumReLU)
        if dtype_policy is not None and _is_logits_resize(layer):
            return _copy_layer(layer, "float32", args, kwargs)  # upsampled logits in float32
        if dtype_policy is not None or not share_layers:
            return _copy_layer(layer, policy, args, kwargs)
        return layer(*args, **kwargs)

    input_tensors = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name),
        functional.input,
    )
    outputs = _compat.run_through_graph(functional, input_tensors, call)
    return keras.Model(input_tensors, outputs, name=functional.name)


def _float32_outputs(model):
    """`model` with every output cast back to float32 (for reduced-precision policies)."""
    outputs = keras.tree.map_structure(
        lambda t: (
            t
            if t.dtype == "float32"
            else keras.layers.Activation("linear", dtype="float32", name="output_float32")(t)
        ),
        model.outputs if len(model.outputs) > 1 else model.outputs[0],
    )
    return keras.Model(model.input, outputs, name=model.name)


def transform_graph(
    functional, fold=True, space_to_batch=True, dtype_policy=None, share_layers=True
):
    """`functional`'s graph rewritten: BN folded, dilated depthwise via space-to-batch,
    layers under `dtype_policy` (outputs back in float32). Returns a plain functional model.

    Example:
        >>> graph = transform_graph(model, fold=True, share_layers=False)
    """
    rebuilt = _rebuild(functional, fold, dtype_policy, space_to_batch, share_layers, {})
    if dtype_policy is not None:
        rebuilt = _float32_outputs(rebuilt)
    return rebuilt


def optimize_for_inference(model, fold=True, dtype_policy=None, space_to_batch=True):
    """A new inference-only model: BN folded (`fold`) and/or rebuilt with `dtype_policy`.

    Args:
        model: a keras_deeplab model (`SegmentationModel`, `MultiScaleInputs` included) or
            any functional Keras model.
        fold: fold BatchNorm into the preceding convolutions.
        dtype_policy: None (keep) or a Keras dtype policy name, e.g. `"mixed_bfloat16"`.
        space_to_batch: the TF-CPU kernel rewrites: depthwise convs dilated by
            `SPACE_TO_BATCH_MIN_RATE` or more through space-to-batch
            (`SpaceToBatchDepthwiseConv2D`; the ASPP of DeepLabV3+), and `MaximumReLU` after
            shared residual sums (Xception).

    Returns:
        A new model sharing nothing mutable with `model` for the folded / re-typed layers
        (other layers are shared when `dtype_policy` is None). A keras_deeplab model stays
        one (same class, same properties); its config records the rewrites (`inference`),
        so its `.keras` file rebuilds the same graph.
    """
    if hasattr(model, "with_inference_options"):  # SegmentationModel, MultiScaleInputs
        return model.with_inference_options(
            fold=fold, dtype_policy=dtype_policy, space_to_batch=space_to_batch
        )
    if not _compat.is_functional(model):
        raise ValueError(
            f"optimize_for_inference needs a functional Keras model (e.g. a keras_deeplab "
            f"model); got {type(model).__name__}."
        )
    return transform_graph(model, fold, space_to_batch, dtype_policy, share_layers=True)


def fold_batch_norm(model):
    """`model` with every Conv/DepthwiseConv -> BatchNorm pair merged into one biased conv.

    Returns a new functional model computing the same function in inference mode (up to
    float rounding); layers that are not folded are shared with `model`.
    """
    return optimize_for_inference(model, fold=True, space_to_batch=False)


def with_dtype_policy(model, dtype_policy="mixed_bfloat16"):
    """A copy of `model` computing under `dtype_policy` (weights copied), float32 output."""
    return optimize_for_inference(
        model, fold=False, dtype_policy=dtype_policy, space_to_batch=False
    )


def count_batch_norms(model):
    """BatchNormalization layers in `model`, nested models included (each counted once)."""
    layers = {id(layer): layer for layer in _compat.all_layers(model)}
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in layers.values())
