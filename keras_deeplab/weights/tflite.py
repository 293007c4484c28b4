"""Google's official DeepLab TFLite files -> keras_deeplab models.

Reads a DeepLab `.tflite` (e.g. `deeplabv3_257_mv_gpu.tflite`, Google's TFLite GPU sample
converted from the `deeplabv3_mnv2_dm05_pascal` checkpoint of `tensorflow/models:research/deeplab`)
with the LiteRT interpreter, infers the architecture from the graph, builds the matching Keras
model and copies every constant of the file into it.

Inferred from the graph:
* family: the weight tensors live under `MobilenetV2/` (the backbone of the official TFLite
  DeepLab models; other backbones are refused);
* depth multiplier: output channels of `MobilenetV2/Conv/weights` (16 -> 0.5, 32 -> 1.0);
* output stride: spatial size of the backbone output vs the input (SAME padding:
  `ceil(H / os)`), cross-checked with the product of the backbone conv strides;
* head: `aspp1..3` (their rates are the dilations of those convs), `image_pooling`,
  `decoder/*` (v3+); class count from `logits/semantic/weights`.
Then every conv op is checked against its Keras layer (name, kernel shape, stride, dilation,
padding, fused activation), the resize / pooling ops against the model's (align-corners
bilinear, global average pooling), and both directions are enforced: every constant of the
file lands in the model and every weighted layer of the model is filled. Finally the Keras
model and the interpreter are run on the same input (`verify=True`).

Layout: CONV_2D weights `[out, kh, kw, in]` -> Keras `[kh, kw, in, out]`; DEPTHWISE_CONV_2D
`[1, kh, kw, C]` -> Keras `[kh, kw, C, 1]` (the first axis moves last in both cases).

BatchNorm: the converter folded every BatchNorm into its conv (scaled kernel + bias); the
original statistics are not in the file. Our models keep their BatchNormalization layers, so
each is set to "add the folded bias": gamma = 1, beta = folded bias, moving_mean = 0,
moving_variance = 1 - epsilon. In inference BN computes (x - 0) / sqrt(var + eps) * 1 + beta,
and in float32 `(1 - eps) + eps == 1.0` exactly (checked for each layer's epsilon), so each
layer computes exactly `x + beta`: the file's conv + bias. Fine-tuning starts from these
statistics, not the original ones.

The loaded model takes RGB in [0, 255] (`include_preprocessing=True`, the default) or the
file's own input, `(x - 127.5) / 127.5` in [-1, 1] (`include_preprocessing=False`), and is
built with `input_shape=(None, None, 3)`, so it runs at any size. The file's image pooling
is a fixed 33x33 average pool; ours is a global average pool, the same at the file's size.
"""

import math
from collections import Counter
from pathlib import Path

import keras
import numpy as np

from keras_deeplab.tflite_file import TFLiteFile

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
OTHER_OPS = ("ADD", "CONCATENATION", "RESIZE_BILINEAR", "AVERAGE_POOL_2D", "MEAN", "DEQUANTIZE")
BACKBONE_SCOPE = "MobilenetV2/"
# Output channels of `MobilenetV2/Conv/weights` -> depth multiplier -> registered backbone.
DEPTH_MULTIPLIERS = {16: 0.5, 32: 1.0}
BACKBONES = {0.5: "mobilenetv2_dm05", 1.0: "mobilenetv2"}
OUTPUT_STRIDES = (8, 16, 32)
FILE_KIND = "a DeepLab .tflite file such as deeplabv3_257_mv_gpu.tflite"


def _conv_weights(graph):
    """`{weight name: (op, weight index, bias index or None)}` for every conv op."""
    convs = {}
    for op in graph.ops:
        if op["op_name"] not in CONV_OPS:
            continue
        inputs = [int(t) for t in op["inputs"]]
        weight = graph.constant_source(inputs[1])
        if weight is None:
            raise graph.error(
                f"the weights of {graph.describe(op)} are not a float constant "
                f"(tensor {graph.name(inputs[1])!r}); quantized files are not supported."
            )
        bias = None
        if len(inputs) > 2 and inputs[2] >= 0:
            bias = graph.constant_source(inputs[2])
            if bias is None:
                raise graph.error(
                    f"the bias of {graph.describe(op)} (tensor {graph.name(inputs[2])!r}) is "
                    "not a float constant."
                )
        convs[graph.name(weight)] = (op, weight, bias)
    return convs


def _registered_name(architecture, config):
    """The registered model with exactly this architecture (any class count), or None."""
    from keras_deeplab import models
    from keras_deeplab.segmentation_model import resolve_arguments

    ignored = ("num_classes", "input_shape", "include_preprocessing", "activation", "dropout")

    def normalised(cfg):
        args = resolve_arguments(architecture, cfg)[1]
        if not args["atrous_rates"]:  # no 3x3 branch: separable or not builds the same
            args["aspp_separable"] = True
        return {k: v for k, v in args.items() if k not in ignored}

    wanted = normalised(config)
    for name in models.list_models(architecture=architecture):
        if normalised(models.model_architecture(name)[1]) == wanted:
            return name
    return None


def _analyse(graph):
    """Architecture of the file: `(info dict, conv weights)`; clear errors otherwise."""
    counts = Counter(op["op_name"] for op in graph.ops)
    for op in graph.ops:
        if op["op_name"] not in CONV_OPS + OTHER_OPS:
            raise graph.error(
                f"{graph.describe(op)} is not an op of a DeepLab float graph this converter maps "
                f"(supported: {', '.join(CONV_OPS + OTHER_OPS)})."
            )
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise graph.error(
            f"expected one input and one output (DeepLab logits), got {len(graph.inputs)} inputs "
            f"and {len(graph.outputs)} outputs."
        )
    in_shape, out_shape = graph.shape(graph.inputs[0]), graph.shape(graph.outputs[0])
    if (
        len(in_shape) != 4
        or in_shape[3] != 3
        or graph.tensors[graph.inputs[0]]["dtype"] != np.float32
    ):
        raise graph.error(
            f"input {graph.name(graph.inputs[0])!r} {in_shape} is not a float32 [1, H, W, 3] image."
        )

    convs = _conv_weights(graph)
    if "logits/semantic/weights" not in convs:
        raise graph.error(
            "no 'logits/semantic/weights' tensor: not a DeepLab segmentation model (weights "
            f"found: {', '.join(sorted(convs)[:4]) or 'none'}...)."
        )
    stem = BACKBONE_SCOPE + "Conv/weights"
    if stem not in convs:
        other = next((n for n in sorted(convs) if "/" in n and not n.startswith("logits/")), None)
        raise graph.error(
            f"the backbone is not MobileNetV2 (no {stem!r}; found e.g. {other!r}); only "
            "MobileNetV2 DeepLab TFLite files (the official ones) are supported."
        )
    stem_channels = graph.shape(convs[stem][1])[0]
    if stem_channels not in DEPTH_MULTIPLIERS:
        raise graph.error(
            f"{stem!r} has {stem_channels} output channels; known depth multipliers: "
            + ", ".join(f"{c} -> {dm}" for c, dm in DEPTH_MULTIPLIERS.items())
            + "."
        )
    depth_multiplier = DEPTH_MULTIPLIERS[stem_channels]
    num_classes = graph.shape(convs["logits/semantic/weights"][1])[0]
    if out_shape != (1, in_shape[1], in_shape[2], num_classes):
        raise graph.error(
            f"output {graph.name(graph.outputs[0])!r} {out_shape} is not the [1, H, W, "
            f"{num_classes}] logits of the {in_shape[1:3]} input."
        )

    backbone_ops = [op for name, (op, _, _) in convs.items() if name.startswith(BACKBONE_SCOPE)]
    backbone_ops.sort(key=lambda op: op["index"])
    last = backbone_ops[-1]
    feature_shape = graph.shape(int(last["outputs"][0]))
    (height, width), (h, w) = in_shape[1:3], feature_shape[1:3]
    stride_product = math.prod(
        graph.op_options(op).get("strides", (1, 1))[0] for op in backbone_ops
    )
    candidates = [
        s for s in OUTPUT_STRIDES if math.ceil(height / s) == h and math.ceil(width / s) == w
    ]
    if stride_product not in candidates:
        raise graph.error(
            f"cannot infer the output stride: backbone output {graph.name(int(last['outputs'][0]))!r} "
            f"is {h}x{w} for a {height}x{width} input (candidates {candidates}) and the backbone "
            f"strides multiply to {stride_product}; supported output strides: {OUTPUT_STRIDES}."
        )
    output_stride = stride_product

    rates, separable = [], []
    for i in (1, 2, 3):
        for name, sep in (
            (f"aspp{i}_depthwise/depthwise_weights", True),
            (f"aspp{i}/weights", False),
        ):
            if name in convs:
                rates.append(graph.op_options(convs[name][0]).get("dilation", (1, 1))[0])
                separable.append(sep)
    if len(set(separable)) > 1:
        raise graph.error("the aspp1..3 branches mix separable and regular convs.")
    config = {
        "backbone": BACKBONES[depth_multiplier],
        "num_classes": num_classes,
        "output_stride": output_stride,
        "atrous_rates": tuple(rates),
        "image_pooling": "image_pooling/weights" in convs,
    }
    if rates:
        config["aspp_separable"] = separable[0]
    decoder = "decoder/feature_projection0/weights" in convs
    if decoder:
        config["low_level_filters"] = graph.shape(convs["decoder/feature_projection0/weights"][1])[
            0
        ]
        pointwise = "decoder/decoder_conv0_pointwise/weights"
        config["decoder_separable"] = pointwise in convs
        refine = pointwise if pointwise in convs else "decoder/decoder_conv0/weights"
        if refine not in convs:
            raise graph.error(f"decoder tensors found but no {refine!r}.")
        config["decoder_filters"] = graph.shape(convs[refine][1])[0]
    architecture = "deeplabv3plus" if decoder else "deeplabv3"
    builder = "DeepLabV3Plus" if decoder else "DeepLabV3"
    info = {
        "path": str(graph.path),
        "model_name": _registered_name(architecture, config),
        "architecture": architecture,
        "builder": builder,
        "config": config,
        "backbone": config["backbone"],
        "depth_multiplier": depth_multiplier,
        "output_stride": output_stride,
        "num_classes": num_classes,
        "atrous_rates": config["atrous_rates"],
        "image_pooling": config["image_pooling"],
        "decoder": decoder,
        "input_name": graph.name(graph.inputs[0]),
        "input_shape": in_shape[1:],
        "input_range": "[-1, 1]: (rgb - 127.5) / 127.5",
        "output_name": graph.name(graph.outputs[0]),
        "output_shape": out_shape[1:],
        "num_ops": len(graph.ops),
        "op_counts": dict(sorted(counts.items())),
        "num_constants": len(graph.constants),
        "num_parameters": int(
            sum(
                np.prod(graph.shape(i), dtype=np.int64)
                for i in graph.constants
                if graph.tensors[i]["dtype"] in (np.float32, np.float16)
            )
        ),
        "constants": {graph.name(i): graph.shape(i) for i in graph.constants},
    }
    return info, convs


def inspect_tflite(path):
    """Reads a DeepLab `.tflite` and returns what it is, without building a model.

    Returns a dict with `model_name` (the registered `create_model` name, or None when the
    combination has none), `architecture` (`"deeplabv3"` / `"deeplabv3plus"`), `builder`
    (`"DeepLabV3"` / `"DeepLabV3Plus"`), `config` (the builder keyword arguments:
    backbone, num_classes, output_stride, atrous_rates, ...),
    the inferred `depth_multiplier`, `output_stride`, `num_classes`, head flags, the file's
    input / output names and shapes, op counts, and its constants (`{name: shape}`).

    Example:
        >>> inspect_tflite("deeplabv3_257_mv_gpu.tflite")["model_name"]
        'deeplabv3_mobilenetv2_dm05_os8'
    """
    return _analyse(TFLiteFile(path, FILE_KIND))[0]


def _build(info, include_preprocessing):
    from keras_deeplab import models

    kwargs = dict(info["config"], input_shape=(None, None, 3))
    kwargs["include_preprocessing"] = include_preprocessing
    if info["model_name"] is not None:
        return models.create_model(info["model_name"], **kwargs)
    return getattr(models, info["builder"])(**kwargs)


def _weighted_layers(model, prefix=""):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer, f"{prefix}{layer.name}/")
        elif layer.weights:
            yield f"{prefix}{layer.name}", layer


def _find_layer(container, name):
    try:
        return container.get_layer(name)
    except ValueError:
        return None


def _unit_variance(epsilon):
    """float32 variance v with v + float32(epsilon) == 1.0 exactly (i.e. 1 - epsilon)."""
    eps = np.float32(epsilon)
    v = np.float32(1.0 - epsilon)
    for _ in range(4):
        total = np.float32(v + eps)
        if total == np.float32(1.0):
            return v
        v = np.nextafter(v, np.float32(-np.inf) if total > 1 else np.float32(np.inf))
    raise AssertionError(f"no float32 variance makes var + {epsilon} == 1")


def _expected_activation(container, name):
    if _find_layer(container, f"{name}_Relu6") is not None:
        return "RELU6"
    if _find_layer(container, f"{name}_relu") is not None:
        return "RELU"
    return "NONE"


def _plan(graph, info, convs, model):
    """`[(variable, value)]` for every weight of `model`; checks both directions."""
    backbone = model.get_layer(f"{info['backbone']}_backbone")
    plan, filled, used = [], set(), set()
    for name, (op, weight, bias) in convs.items():
        scope, _, leaf = name.rpartition("/")
        if leaf not in ("weights", "depthwise_weights") or not scope:
            raise graph.error(
                f"unknown weight tensor {name!r} (expected '<scope>/weights' or "
                "'<scope>/depthwise_weights')."
            )
        if scope.startswith(BACKBONE_SCOPE):
            container, layer_name = backbone, scope[len(BACKBONE_SCOPE) :].replace("/", "_")
        else:
            container, layer_name = model, scope.replace("/", "_")
        layer = _find_layer(container, layer_name)
        where = f"tensor {name!r} -> Keras layer {container.name}/{layer_name}"
        depthwise = op["op_name"] == "DEPTHWISE_CONV_2D"
        wanted = keras.layers.DepthwiseConv2D if depthwise else keras.layers.Conv2D
        if layer is None or not isinstance(layer, wanted):
            raise graph.error(
                f"{where}: no such {wanted.__name__} layer in the {info['builder']} model "
                f"{info['config']}; the file's architecture differs."
            )
        kernel = graph.value(weight).astype(np.float32).transpose(1, 2, 3, 0)
        layer_kernel = layer.kernel
        if tuple(layer_kernel.shape) != kernel.shape:
            raise graph.error(
                f"{where}: shape mismatch, file {graph.shape(weight)} -> Keras layout "
                f"{kernel.shape}, model {tuple(layer_kernel.shape)}."
            )
        options = graph.op_options(op)
        found = (
            options.get("strides"),
            options.get("dilation"),
            options.get("padding"),
            options.get("activation"),
        )
        expected = (
            tuple(layer.strides),
            tuple(layer.dilation_rate),
            layer.padding,
            _expected_activation(container, layer_name),
        )
        if found != expected:
            raise graph.error(
                f"{where}: (stride, dilation, padding, activation) {found} in the file, "
                f"{expected} in the model."
            )
        plan.append((layer_kernel, kernel))
        filled.add(id(layer))
        used.update(i for i in (weight, bias) if i is not None)

        channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
        values = np.zeros(channels, np.float32)
        if bias is not None:
            values = graph.value(bias).astype(np.float32)
            if values.shape != (channels,):
                raise graph.error(
                    f"bias {graph.name(bias)!r} {values.shape} does not match {where} "
                    f"({channels} channels)."
                )
        if layer.use_bias:
            plan.append((layer.bias, values))
            continue
        bn = _find_layer(container, f"{layer_name}_BatchNorm")
        if bn is None or not bn.center:
            raise graph.error(
                f"{where}: the layer has no bias and no BatchNorm ({layer_name}_BatchNorm) to "
                f"hold the folded bias {graph.name(bias) if bias is not None else '(none)'}."
            )
        if bn.scale:
            plan.append((bn.gamma, np.ones_like(values)))
        plan.append((bn.beta, values))
        plan.append((bn.moving_mean, np.zeros_like(values)))
        plan.append((bn.moving_variance, np.full_like(values, _unit_variance(bn.epsilon))))
        filled.add(id(bn))

    for index in graph.constants:
        if index not in used:
            _check_structural_constant(graph, index)
    for path, layer in _weighted_layers(model):
        if id(layer) not in filled:
            raise graph.error(
                f"Keras layer {path} of the {info['builder']} model {info['config']} gets no "
                "weights: the file has no tensor for it."
            )
    return plan


def _check_structural_constant(graph, index):
    """Resize sizes and mean axes are graph structure (our layers derive them): check them."""
    consumers = graph.consumers.get(index, [])
    value = graph.value(index)
    for op in consumers:
        inputs = [int(t) for t in op["inputs"]]
        kind = op["op_name"]
        if kind == "RESIZE_BILINEAR" and inputs[1:] == [index]:
            if tuple(value.tolist()) == graph.shape(int(op["outputs"][0]))[1:3]:
                continue
        if kind == "MEAN" and inputs[1:] == [index] and sorted(value.ravel().tolist()) == [1, 2]:
            continue
        break
    else:
        if consumers:
            return
    raise graph.error(
        f"constant tensor {graph.name(index)!r} {graph.shape(index)} (used by "
        f"{[graph.describe(op) for op in consumers] or 'no op'}) has no place in the Keras model."
    )


def _check_other_ops(graph):
    """Resizes must be align-corners bilinear, pools global, concats on channels."""
    for op in graph.ops:
        kind, options = op["op_name"], graph.op_options(op)
        inputs = [int(t) for t in op["inputs"] if t >= 0]
        ok = True
        if kind == "RESIZE_BILINEAR":
            ok = options.get("align_corners") is True and not options.get("half_pixel_centers")
        elif kind == "AVERAGE_POOL_2D":
            ok = options.get("filter") == graph.shape(inputs[0])[1:3]
            ok = ok and options.get("activation") == "NONE"
        elif kind == "CONCATENATION":
            ok = options.get("axis") in (3, -1) and options.get("activation") == "NONE"
        if not ok:
            raise graph.error(
                f"{graph.describe(op)} has options {options} that the Keras model does not "
                "compute (it uses align-corners bilinear resizes, global average pooling and "
                "channel concatenation)."
            )


def _verify(graph, model, include_preprocessing, tolerance):
    """Runs the interpreter and the model on one fixed input; max abs logit difference."""
    interpreter = graph.interpreter
    interpreter.allocate_tensors()
    shape = graph.shape(graph.inputs[0])
    rgb = np.random.default_rng(0).uniform(0.0, 255.0, shape).astype(np.float32)
    normalised = (rgb - 127.5) / 127.5
    interpreter.set_tensor(graph.inputs[0], normalised)
    interpreter.invoke()
    reference = interpreter.get_tensor(graph.outputs[0])
    ours = np.asarray(model(rgb if include_preprocessing else normalised, training=False))
    diff = float(np.max(np.abs(ours - reference)))
    scale = max(1.0, float(np.max(np.abs(reference))))
    if not diff <= tolerance * scale:
        raise graph.error(
            f"the Keras model does not reproduce the file's output {graph.name(graph.outputs[0])!r}"
            f" (max abs difference {diff:.3g} > {tolerance * scale:.3g}); the file's graph "
            "differs from the inferred architecture."
        )
    return diff


def _load(path, include_preprocessing=True, verify=True, tolerance=1e-4):
    graph = TFLiteFile(path, FILE_KIND)
    info, convs = _analyse(graph)
    _check_other_ops(graph)
    model = _build(info, include_preprocessing)
    for variable, value in _plan(graph, info, convs, model):
        variable.assign(value)
    if verify:
        info["verify_max_abs_diff"] = _verify(graph, model, include_preprocessing, tolerance)
    return model, info


def load_tflite(path, include_preprocessing=True, verify=True):
    """Builds the Keras model of an official DeepLab `.tflite` and loads its weights.

    Args:
        path: the `.tflite` file (e.g. `deeplabv3_257_mv_gpu.tflite`).
        include_preprocessing: True: the model takes RGB in [0, 255]; False: it takes the
            file's own input, `(rgb - 127.5) / 127.5`.
        verify: run the model and the LiteRT interpreter on one input of the file's size and
            raise if the logits differ by more than 1e-4 x max(1, max |logit|).

    Returns:
        A `SegmentationModel` with `input_shape=(None, None, 3)` (any image size) returning
        logits; its `architecture`, `backbone_name`, `output_stride` say what the file is.
        `inspect_tflite(path)` tells which architecture it is.

    Raises:
        ValueError naming the file (and the tensor) when the file is not TFLite, not a
        MobileNetV2 DeepLab graph, or a tensor does not map onto the model.

    Example:
        >>> model = load_tflite("deeplabv3_257_mv_gpu.tflite")
        >>> logits = model(np.zeros((1, 257, 257, 3), "float32"))
    """
    return _load(path, include_preprocessing, verify)[0]


def convert_tflite(path, out_weights_path):
    """Converts a DeepLab `.tflite` into a Keras `.weights.h5`; returns `(model_name, config)`.

    The weights are those of the model built with `include_preprocessing=True`. When
    `model_name` is a registered name, load them with
    `create_model(model_name, **config, weights=out_weights_path)`; otherwise `model_name` is
    the builder (`"DeepLabV3"` / `"DeepLabV3Plus"`): `keras_deeplab.<model_name>(**config)`.
    (The weights load as well into the `include_preprocessing=False` model: no weights differ.)

    Example:
        >>> convert_tflite("deeplabv3_257_mv_gpu.tflite", "dm05_os8_voc.weights.h5")
        ('deeplabv3_mobilenetv2_dm05_os8', {'backbone': 'mobilenetv2_dm05', ...})
    """
    out = Path(out_weights_path)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"{out}: the output file name must end with '.weights.h5'.")
    model, info = _load(path, include_preprocessing=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(out))
    return info["model_name"] or info["builder"], dict(info["config"])
