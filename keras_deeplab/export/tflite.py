"""TFLite export at a fixed input size, verified against the Keras model after writing.

The model is traced at `[1, H, W, 3]` through a SavedModel (`keras.export.ExportArchive`) and
converted with `tf.lite.TFLiteConverter.from_saved_model` (TFLite guide "Post-training
quantization", https://ai.google.dev/edge/litert/models/post_training_quantization): float32,
float16 weights, dynamic-range int8 weights, or full-integer int8 with a representative
dataset. The graph is checked before it is written: dilated convolutions must be native
dilated CONV_2D / DEPTHWISE_CONV_2D (no SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND) and every
RESIZE_BILINEAR must keep `align_corners=True` (the official `core/utils.py:resize_bilinear`).
The written file is then run in the LiteRT interpreter on sample images next to the Keras
model (`verify_tflite`).

File interface (signature `serving_default`; input index 0, output index 0):

* input `image`: `[1, H, W, 3]` RGB in [0, 255] (the model normalises inside), or
  `normalized_image`: the backbone's own input convention (`(rgb - 127.5) / 127.5` for
  MobileNetV2 / Xception, as Google's `deeplabv3_257_mv_gpu.tflite`) for models built with
  `include_preprocessing=False`. float32, or int8/uint8 with `int8_io` (quantization
  parameters in the report and the interpreter's input details).
* output `logits` (or `probabilities` for models with an activation): float32
  `[1, H, W, num_classes]` at the input size; with `argmax=True` instead `class_map`: uint8
  `[1, H, W]` class indices (ARG_MAX + CAST inside the model).
* `<stem>.labels.txt` beside the file: one class name per line, line i = class i.

Example:

```python
model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", weights="w.weights.h5")
report = keras_deeplab.export.to_tflite(model, "deeplab.tflite", input_size=257)
report = keras_deeplab.export.to_tflite(
    model, "deeplab_int8.tflite", input_size=257, quantize="int8",
    representative_data="images/", argmax=True,
)
```
"""

import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.export.report import VerificationError, atomic_write_bytes, write_report
from keras_deeplab.export.saved_model import default_labels, model_preprocessing, num_classes_of
from keras_deeplab.layers import Preprocessing
from keras_deeplab.msc import MultiScaleInputs

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
DEFAULT_TOLERANCE = 1e-4
# Lowest argmax agreement (fraction of pixels) accepted per mode; None: reported only.
# "none" applies to class maps (`argmax=True`), whose float logits are checked otherwise.
# Integer arithmetic (dynamic-range, int8) moves near-ties of the logits: reported only.
AGREEMENT_FLOORS = {"none": 0.999, "float16": 0.9, "dynamic": None, "int8": None}
# Relative error (max |tflite - keras| / max |keras|) above which an intermediate tensor
# counts as diverged when a failed verification looks for the first bad layer.
DIVERGENCE_THRESHOLDS = {"none": 1e-3, "float16": 2e-2, "dynamic": 0.1, "int8": 0.25}
FORBIDDEN_OPS = ("SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_REPRESENTATIVE_STEPS = 100
DEFAULT_SAMPLE_IMAGES = 4
SIGNATURE = "serving_default"
RGB_INPUT, NORMALIZED_INPUT = "image", "normalized_image"


# ---------------------------------------------------------------- arguments


def _input_hw(input_size):
    size = (input_size, input_size) if isinstance(input_size, int | np.integer) else input_size
    try:
        h, w = (int(s) for s in size)
        ok = all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(
            f"input_size must be a positive int (square) or (height, width); got {input_size!r}."
        )
    return h, w


def _check_quantize(quantize):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}; got {quantize!r}.")


def _io_type(int8_io):
    if int8_io in (False, None):
        return None
    if int8_io is True or int8_io == "int8":
        return tf.int8
    if int8_io == "uint8":
        return tf.uint8
    raise ValueError(f"int8_io must be False, True / 'int8' or 'uint8'; got {int8_io!r}.")


def labels_path_for(path):
    """`<stem>.labels.txt` beside a `.tflite` file."""
    path = Path(path)
    return path.with_name(f"{path.stem}.labels.txt")


def _resolve_labels(labels, num_classes):
    if labels is None:
        return default_labels(num_classes)
    if isinstance(labels, str | os.PathLike):
        source = Path(labels)
        if not source.is_file():
            raise ValueError(f"labels file {source} does not exist (one class name per line).")
        labels = source.read_text().splitlines()
    labels = [str(label).strip() for label in labels]
    if len(labels) != num_classes or any(not label for label in labels):
        raise ValueError(
            f"labels must be {num_classes} non-empty class names (one per model output "
            f"channel); got {len(labels)}."
        )
    return labels


# ---------------------------------------------------------------- images


def _pil_resize(array, hw):
    from PIL import Image

    image = Image.fromarray(np.asarray(array, np.uint8))
    return np.asarray(image.resize((hw[1], hw[0]), Image.BILINEAR), np.float32)


def _fit(image, hw, where):
    """One RGB image as float32 `[H, W, 3]` at the export size."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: expected an RGB image [H, W, 3]; got shape {image.shape}.")
    if tuple(image.shape[:2]) == tuple(hw):
        return image.astype(np.float32)
    if image.dtype == np.uint8:
        return _pil_resize(image, hw)
    resized = tf.image.resize(image.astype(np.float32), hw, method="bilinear", antialias=True)
    return resized.numpy()


def image_files(folder):
    """Sorted image files (jpg / jpeg / png / bmp) of a folder; clear errors when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"image folder {folder} does not exist or is not a directory; pass a folder of "
            f"{'/'.join(IMAGE_SUFFIXES)} images."
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"image folder {folder} contains no {'/'.join(IMAGE_SUFFIXES)} images; add some "
            "(e.g. a few hundred training images) or pass an iterable of RGB arrays."
        )
    return files


def load_image(path, hw):
    """An image file as RGB float32 `[H, W, 3]` in [0, 255], PIL-bilinear-resized to `hw`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: not a readable image ({err}).") from None
    if rgb.size != (hw[1], hw[0]):
        rgb = rgb.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(rgb, np.float32)


def _iter_images(source, hw, what):
    """RGB float32 `[H, W, 3]` images from a folder, an array or an iterable."""
    if isinstance(source, str | os.PathLike):
        for path in image_files(source):
            yield load_image(path, hw)
        return
    if isinstance(source, np.ndarray | tf.Tensor):
        array = np.asarray(source)
        for i, image in enumerate(array if array.ndim == 4 else array[None]):
            yield _fit(image, hw, f"{what}[{i}]")
        return
    if not isinstance(source, Iterable):
        raise ValueError(
            f"{what} must be an image folder, an array [N, H, W, 3] or an iterable of RGB "
            f"images; got {type(source).__name__}."
        )
    for i, item in enumerate(source):
        if isinstance(item, dict):
            item = item.get("image", item.get("images"))
        elif isinstance(item, tuple | list):
            item = item[0]  # (image, label) pairs
        array = np.asarray(item)
        for image in array if array.ndim == 4 else array[None]:
            yield _fit(image, hw, f"{what} item {i}")


def _take(source, hw, limit, what):
    images = []
    for image in _iter_images(source, hw, what):
        images.append(image)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{what} holds no images.")
    return images


def synthetic_images(hw, count=DEFAULT_SAMPLE_IMAGES, seed=0):
    """Smooth random RGB images in [0, 255] (for verification when no images are given)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, max(2, hw[0] // 8), max(2, hw[1] // 8), 3))
    smooth = tf.image.resize(coarse.astype(np.float32), hw, method="bicubic").numpy()
    noisy = smooth + rng.normal(0, 8, smooth.shape)
    return list(np.clip(noisy, 0, 255).astype(np.float32))


# ---------------------------------------------------------------- the exported computation


def _inner(model):
    return model.model if isinstance(model, MultiScaleInputs) else model


def _backbone_mode(model):
    """Normalisation of the model's backbone (from its `<backbone>_backbone` sub-model)."""
    from keras_deeplab.backbones import preprocessing_mode

    for layer in getattr(_inner(model), "layers", []):
        if layer.name.endswith("_backbone"):
            try:
                return preprocessing_mode(layer.name[: -len("_backbone")])
            except (KeyError, ValueError):
                return None
    return None


def _strip_preprocessing(model):
    """The same model (shared layers and weights) without its `preprocessing` layer."""
    if isinstance(model, MultiScaleInputs):
        return MultiScaleInputs(
            _strip_preprocessing(model.model), scales=model.scales, activation=model.activation
        )

    def call(layer, *args, **kwargs):
        if isinstance(layer, Preprocessing):
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _has_activation(model):
    if isinstance(model, MultiScaleInputs):
        return model.activation is not None
    return any(layer.name == "probabilities" for layer in model.layers[-2:])


class _Exported:
    """What the file computes: [preprocessing] -> model -> [argmax], in Keras / TF."""

    def __init__(self, model, include_preprocessing=None, argmax=False):
        if include_preprocessing not in (None, True, False):
            raise ValueError(
                f"include_preprocessing must be None, True or False; got {include_preprocessing!r}."
            )
        own = model_preprocessing(model)
        self.mode = own or _backbone_mode(model)
        self.core, self.prepend = model, None
        if include_preprocessing is True and own is None:
            if self.mode is None:
                raise ValueError(
                    f"Model {model.name!r} has no 'preprocessing' layer and no known backbone, so "
                    "include_preprocessing=True cannot tell its normalisation; rebuild it with "
                    "include_preprocessing=True or export with include_preprocessing=None."
                )
            self.prepend = Preprocessing(self.mode, name="preprocessing")
        elif include_preprocessing is False and own is not None:
            self.core = _strip_preprocessing(model)
        self.rgb_input = own is not None if include_preprocessing is None else include_preprocessing
        self.num_classes = num_classes_of(model)
        self.argmax = bool(argmax)
        if self.argmax and self.num_classes > 256:
            raise ValueError(
                f"argmax=True writes a uint8 class map; {self.num_classes} classes do not fit."
            )
        self.input_key = RGB_INPUT if self.rgb_input else NORMALIZED_INPUT
        if self.argmax:
            self.output_key = "class_map"
        else:
            self.output_key = "probabilities" if _has_activation(model) else "logits"

    def to_input(self, rgb):
        """RGB [0, 255] images -> the file's input convention."""
        rgb = np.asarray(rgb, np.float32)
        if self.rgb_input or self.mode is None:
            return rgb
        return np.asarray(Preprocessing(self.mode)(rgb), np.float32)

    def forward(self, x, network=None):
        if self.prepend is not None:
            x = self.prepend(x)
        network = self.core if network is None else network
        y = tf.cast(network(x, training=False), tf.float32)
        if self.argmax:
            return tf.cast(tf.argmax(y, axis=-1, output_type=tf.int32), tf.uint8)
        return y

    def reference(self, x):
        """Keras result for inputs in the file's convention: logits, or the class map."""
        return np.asarray(self.forward(tf.constant(x, tf.float32)))

    def describe_input(self):
        if self.rgb_input:
            return "RGB in [0, 255] (normalised inside the model)"
        if self.mode == "symmetric":
            return "(rgb - 127.5) / 127.5, RGB in [-1, 1]"
        if self.mode == "caffe":
            return "BGR with the ImageNet mean (103.939, 116.779, 123.68) subtracted"
        return "the model's own input convention"


# ---------------------------------------------------------------- graph optimisation

IMAGE_POOLING = ("image_pooling_mean", "image_pooling_resize", "aspp_concat")
PROJECTION = ("concat_projection", "concat_projection_BatchNorm")


class _ImagePoolingProjection(keras.layers.Layer):
    """`BN(conv1x1(concat(branches)))` with the constant image-pooling branch kept 1x1.

    The image-pooling branch is a 1x1 map resized with align-corners, i.e. the same vector
    at every position, so its rows of the 1x1 projection kernel can be applied on the 1x1
    map and broadcast-added: no resize, no concatenation of that branch, and the projection
    conv shrinks by its channels. BatchNorm (inference statistics) is folded into both
    kernels and the bias. Equal to the original up to float rounding. Export-only.
    """

    def __init__(self, conv, bn, constant, **kwargs):
        super().__init__(**kwargs)
        self.conv, self.bn = conv, bn
        self.constant = tuple(constant)  # per input: True for the constant (1x1) branches

    def call(self, inputs):
        bn = self.bn
        scale = tf.math.rsqrt(bn.moving_variance + bn.epsilon)
        if bn.scale:
            scale = scale * bn.gamma
        shift = -bn.moving_mean * scale
        if bn.center:
            shift = shift + bn.beta
        kernel = self.conv.kernel[0, 0] * scale  # [in, out]
        rows = {True: [], False: []}
        offset = 0
        for x, constant in zip(inputs, self.constant, strict=True):
            channels = x.shape[-1]
            rows[constant].extend(range(offset, offset + channels))
            offset += channels

        def project(tensors, which):
            x = tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=-1)
            k = tf.gather(kernel, rows[which])[None, None]
            return tf.nn.conv2d(x, k, strides=1, padding="VALID")

        spatial = [x for x, c in zip(inputs, self.constant, strict=True) if not c]
        constant = [x for x, c in zip(inputs, self.constant, strict=True) if c]
        return project(spatial, False) + (project(constant, True) + shift)

    def compute_output_shape(self, input_shapes):
        spatial = next(s for s, c in zip(input_shapes, self.constant, strict=True) if not c)
        return (*spatial[:3], self.conv.filters)


def _consumers(functional):
    """`{layer name: [consumer layer names]}` within `functional`'s own graph."""
    producer = {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            for t in node.outputs:
                producer[id(t)] = node.operation.name
    consumers = {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            for t in node.input_tensors:
                if id(t) in producer:
                    consumers.setdefault(producer[id(t)], []).append(node.operation.name)
    return consumers


def _foldable(model):
    """True when the ASPP image-pooling branch and its projection have the expected form."""
    try:
        layers = {name: model.get_layer(name) for name in IMAGE_POOLING + PROJECTION}
        consumers = _consumers(model)
    except (ValueError, AttributeError):
        return False
    conv, bn = layers["concat_projection"], layers["concat_projection_BatchNorm"]
    checks = (
        type(layers["image_pooling_resize"]).__name__ == "ResizeBilinear",
        isinstance(layers["image_pooling_mean"], keras.layers.GlobalAveragePooling2D),
        isinstance(layers["aspp_concat"], keras.layers.Concatenate),
        layers["aspp_concat"].axis in (-1, 3),
        isinstance(conv, keras.layers.Conv2D),
        tuple(conv.kernel_size) == (1, 1) and tuple(conv.strides) == (1, 1),
        not conv.use_bias and conv.groups == 1,
        conv.activation is keras.activations.linear,
        isinstance(bn, keras.layers.BatchNormalization) and bn.axis in (-1, 3),
        consumers.get("image_pooling_resize") == ["aspp_concat"],
        consumers.get("aspp_concat") == ["concat_projection"],
        consumers.get("concat_projection") == ["concat_projection_BatchNorm"],
    )
    return all(checks)


def optimize_for_export(model, hw):
    """`(network, applied)`: `model` at the static size `hw` with export-only rewrites.

    The network shares the model's layers and weights. Rewrites (listed in `applied`):
    * `"image_pooling_fold"`: see `_ImagePoolingProjection` (about 8% faster on the
      257x257 MobileNetV2 model: 71M of its 726M multiply-adds are the image-pooling rows of
      the projection, computed at every position for a constant vector).
    The image pooling stays a MEAN: as fast as Google's fixed-size AVERAGE_POOL_2D in float
    (measured), and unlike it delegated to XNNPACK in int8 (a quantized AVERAGE_POOL_2D
    splits the graph into two delegate partitions).
    Models without this ASPP form (v1, v2, MSC, cascade) are only given the static size.
    """
    if isinstance(model, MultiScaleInputs) or not hasattr(model, "_nodes_by_depth"):
        return model, []
    fold = _foldable(model)
    applied, constant_ids = [], set()

    def call(layer, *args, **kwargs):
        if fold and layer.name == "image_pooling_resize":
            pooled = args[0][0]
            constant_ids.add(id(pooled))
            return pooled
        if fold and layer.name == "aspp_concat":
            inputs = list(args[0])
            applied.append("image_pooling_fold")
            return _ImagePoolingProjection(
                model.get_layer("concat_projection"),
                model.get_layer("concat_projection_BatchNorm"),
                [id(x) in constant_ids for x in inputs],
                name="concat_projection_folded",
            )(inputs)
        if fold and layer.name in PROJECTION:
            return args[0]
        return layer(*args, **kwargs)

    static = keras.Input(batch_shape=(1, *hw, 3))
    network = keras.models.clone_model(
        model, input_tensors=static, clone_function=lambda layer: layer, call_function=call
    )
    return network, applied


# ---------------------------------------------------------------- conversion


def _convert(exported, hw, quantize, representative, int8_io, network=None):
    """TFLite flatbuffer bytes of `exported` (run through `network`) at `[1, H, W, 3]`."""
    spec = tf.TensorSpec([1, *hw, 3], tf.float32, name=exported.input_key)
    network = exported.core if network is None else network

    def serve(image):
        return {exported.output_key: exported.forward(image, network)}

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[spec])
    workdir = tempfile.mkdtemp(prefix="keras_deeplab_tflite_")
    try:
        archive.write_out(workdir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(workdir, signature_keys=[SIGNATURE])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":

            def dataset():
                for image in representative:
                    yield [exported.to_input(image[None])]

            converter.representative_dataset = dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io is not None:
                converter.inference_input_type = int8_io
                if not exported.argmax:
                    converter.inference_output_type = int8_io
        try:
            return converter.convert()
        except Exception as err:  # converter errors are long C++ dumps: keep the first line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(
                f"TFLite conversion of model {exported.core.name!r} (quantize={quantize!r}) "
                f"failed: {first}"
            ) from err
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}


def op_options(path=None, content=None):
    """`[{"op", ...options}]` of every op of a TFLite file (or bytes), in graph order.

    Options read from the flatbuffer: `stride`, `dilation`, `activation` (fused) for
    CONV_2D / DEPTHWISE_CONV_2D, `filter` for pools, `activation` for ADD,
    `align_corners` / `half_pixel_centers` for RESIZE_BILINEAR.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    if content is None:
        content = Path(path).read_bytes()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = {
        schema.BuiltinOptions.Conv2DOptions: schema.Conv2DOptions,
        schema.BuiltinOptions.DepthwiseConv2DOptions: schema.DepthwiseConv2DOptions,
        schema.BuiltinOptions.Pool2DOptions: schema.Pool2DOptions,
        schema.BuiltinOptions.ResizeBilinearOptions: schema.ResizeBilinearOptions,
        schema.BuiltinOptions.AddOptions: schema.AddOptions,
    }
    model = schema.Model.GetRootAs(content, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = codes[op.OpcodeIndex()]
            entry = {"op": names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")}
            cls, table = kinds.get(op.BuiltinOptionsType()), op.BuiltinOptions()
            if cls is not None and table is not None:
                options = cls()
                options.Init(table.Bytes, table.Pos)
                if hasattr(options, "StrideH"):
                    entry["stride"] = (options.StrideH(), options.StrideW())
                if hasattr(options, "DilationHFactor"):
                    entry["dilation"] = (options.DilationHFactor(), options.DilationWFactor())
                if hasattr(options, "FilterHeight"):
                    entry["filter"] = (options.FilterHeight(), options.FilterWidth())
                if hasattr(options, "FusedActivationFunction"):
                    code = options.FusedActivationFunction()
                    entry["activation"] = _ACTIVATIONS.get(code, str(code))
                if hasattr(options, "AlignCorners"):
                    entry["align_corners"] = bool(options.AlignCorners())
                    entry["half_pixel_centers"] = bool(options.HalfPixelCenters())
            found.append(entry)
    return found


def _interpreter(path=None, content=None, num_threads=None, **kwargs):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(
        model_path=None if path is None else str(path),
        model_content=content,
        num_threads=num_threads,
        **kwargs,
    )


def op_counts(path=None, content=None):
    """`{op name: count}` of a TFLite file (or flatbuffer bytes), sorted by name."""
    ops = _interpreter(path, content)._get_ops_details()
    return dict(sorted(Counter(op["op_name"] for op in ops).items()))


def check_graph(content, where="the converted model"):
    """Op counts of a flatbuffer; raises when dilations or resizes were not kept native."""
    counts = op_counts(content=content)
    bad = {op: counts[op] for op in FORBIDDEN_OPS if op in counts}
    if bad:
        raise RuntimeError(
            f"{where} contains {bad}: a dilated convolution was lowered to space-to-batch "
            "instead of a native dilated CONV_2D / DEPTHWISE_CONV_2D. Build models with "
            "keras_deeplab.layers.Conv2D / DepthwiseConv2D (not keras.layers')."
        )
    resizes = [op for op in op_options(content=content) if op["op"] == "RESIZE_BILINEAR"]
    wrong = [
        i
        for i, op in enumerate(resizes)
        if not op.get("align_corners") or op.get("half_pixel_centers")
    ]
    if wrong:
        raise RuntimeError(
            f"{where}: RESIZE_BILINEAR op(s) {wrong} of {len(resizes)} do not use "
            "align_corners=True (half_pixel_centers=False) as the official DeepLab resizes; "
            "use keras_deeplab.layers.ResizeBilinear."
        )
    return counts


# ---------------------------------------------------------------- public API


def to_tflite(
    model,
    path,
    input_size=513,
    quantize="none",
    representative_data=None,
    argmax=False,
    include_preprocessing=None,
    labels=None,
    int8_io=False,
    verify=True,
    report_path=None,
    sample_images=None,
    representative_steps=DEFAULT_REPRESENTATIVE_STEPS,
    num_threads=2,
    tolerance=DEFAULT_TOLERANCE,
    min_agreement=None,
    optimize=True,
):
    """Exports `model` to a `.tflite` file at a fixed input size, then verifies it.

    The file is written atomically (temporary file + rename): an interrupted export leaves
    no partial `path`. `<stem>.labels.txt` is written beside it.

    Args:
        model: a keras_deeplab model (functional or `MultiScaleInputs`), single image input.
        path: output `.tflite` file.
        input_size: fixed input size, an int (square) or `(height, width)`.
        quantize: `"none"` (float32), `"float16"` (float16 weights), `"dynamic"` (int8
            weights, float activations) or `"int8"` (full integer; needs
            `representative_data`).
        representative_data: calibration images for `"int8"`: a folder of jpg/png/bmp images
            or an array / iterable of RGB images in [0, 255] (`[H, W, 3]`, any size; resized
            to `input_size`, files with PIL bilinear); at most `representative_steps` are used.
        argmax: put the argmax inside: the output is a uint8 class map `[1, H, W]`.
        include_preprocessing: None: the model's own input convention; True: the file takes
            RGB in [0, 255] (normalisation added when the model has none); False: the file
            takes the backbone's normalised input (the model's `preprocessing` layer dropped).
        labels: class names (list, or a text file with one per line); default: the PASCAL
            VOC names for 21 classes, else `class_0`, `class_1`, ...
        int8_io: only with `"int8"`: True / `"int8"` or `"uint8"` for integer input (and
            output, unless `argmax`); False keeps float32 input and output.
        verify: run `verify_tflite` on the written file (raises `VerificationError`).
        report_path: JSON file for the report (also written when verification fails).
        sample_images: verification images (as `representative_data`); default: the first
            few representative images, else smooth synthetic images.
        representative_steps: most calibration images used.
        num_threads: interpreter threads for the latency measure.
        tolerance: max abs difference of float32 logits.
        min_agreement: argmax agreement floor (default `AGREEMENT_FLOORS[quantize]`).
        optimize: apply the export-only graph rewrite of `optimize_for_export` (the ASPP
            image-pooling branch's projection computed on its 1x1 map and broadcast-added);
            the file is still verified against the unmodified model.

    Returns:
        The report dict: path, size, op counts, input / output description, labels path,
        and the verification results (see `verify_tflite`).

    Raises:
        ValueError: bad arguments or data (unknown mode, empty image folder, ...).
        RuntimeError: conversion failed, or the graph uses space-to-batch or non
            align-corners resizes (nothing is written then).
        VerificationError: the written file does not reproduce the Keras model.

    Example:
        `to_tflite(model, "deeplab.tflite", input_size=257, quantize="float16")`
    """
    _check_quantize(quantize)
    hw = _input_hw(input_size)
    io_type = _io_type(int8_io)
    if io_type is not None and quantize != "int8":
        raise ValueError(f"int8_io needs quantize='int8' (got quantize={quantize!r}).")
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"{path}: the output file name must end with '.tflite'.")
    exported = _Exported(model, include_preprocessing, argmax)
    built = tuple(_inner(model).inputs[0].shape[1:3])
    if any(d is not None and d != s for d, s in zip(built, hw, strict=True)):
        raise ValueError(
            f"Model {model.name!r} is built for {built[0]}x{built[1]} inputs; export it with "
            f"input_size={built} or rebuild it with input_shape=(None, None, 3)."
        )
    labels = _resolve_labels(labels, exported.num_classes)

    representative = None
    if quantize == "int8":
        if representative_data is None:
            raise ValueError(
                "quantize='int8' needs representative_data: a folder of images or an iterable "
                "of RGB images in [0, 255] to calibrate the activation ranges."
            )
        representative = _take(representative_data, hw, representative_steps, "representative_data")
    if sample_images is not None:
        samples = _take(sample_images, hw, None, "sample_images")
    elif representative is not None:
        samples = representative[:DEFAULT_SAMPLE_IMAGES]
    elif representative_data is not None:
        samples = _take(representative_data, hw, DEFAULT_SAMPLE_IMAGES, "representative_data")
    else:
        samples = synthetic_images(hw)

    start = time.perf_counter()
    network, applied = optimize_for_export(exported.core, hw) if optimize else (None, [])
    content = _convert(exported, hw, quantize, representative, io_type, network)
    counts = check_graph(content, f"TFLite graph of model {model.name!r}")
    atomic_write_bytes(path, content)
    labels_path = atomic_write_bytes(labels_path_for(path), ("\n".join(labels) + "\n").encode())
    export_info = {
        "format": "tflite",
        "path": str(path),
        "labels_path": str(labels_path),
        "quantize": quantize,
        "int8_io": None if io_type is None else io_type.name,
        "argmax": exported.argmax,
        "input_size": list(hw),
        "input_convention": exported.describe_input(),
        "num_classes": exported.num_classes,
        "representative_images": 0 if representative is None else len(representative),
        "optimizations": applied,
        "export_seconds": round(time.perf_counter() - start, 3),
        "op_counts": counts,
    }
    if not verify:
        report = {**export_info, "verified": False, "size_bytes": path.stat().st_size}
    else:
        try:
            report = verify_tflite(
                model,
                path,
                samples,
                include_preprocessing=include_preprocessing,
                argmax=argmax,
                quantize=quantize,
                tolerance=tolerance,
                min_agreement=min_agreement,
                num_threads=num_threads,
            )
        except VerificationError as error:
            if error.report is not None:
                error.report = {**export_info, **error.report}
                if report_path is not None:
                    write_report(report_path, error.report)
            raise
        report = {**export_info, **report}
    if report_path is not None:
        write_report(report_path, report)
    return report


def detect_quantization(interpreter):
    """Quantization mode of a TFLite graph, read from its tensor types.

    `"int8"`: conv inputs are integer; `"dynamic"`: int8 conv weights on float inputs;
    `"float16"`: float16 constants; `"none"` otherwise.
    """
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv_inputs, conv_weights = set(), set()
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            conv_inputs.add(tensors[op["inputs"][0]]["dtype"])
            conv_weights.add(tensors[op["inputs"][1]]["dtype"])
    if {np.int8, np.uint8} & conv_inputs:
        return "int8"
    if np.int8 in conv_weights:
        return "dynamic"
    if any(t["dtype"] == np.float16 for t in tensors.values()):
        return "float16"
    return "none"


def _signature(interpreter):
    """`(input key, input details, output key, output details)` of the file."""
    signatures = interpreter.get_signature_list()
    if SIGNATURE in signatures:
        runner = interpreter.get_signature_runner(SIGNATURE)
        (in_key, in_detail), *more_in = runner.get_input_details().items()
        outputs = runner.get_output_details()
        if not more_in and len(outputs) == 1:
            (out_key, out_detail) = next(iter(outputs.items()))
            return in_key, in_detail, out_key, out_detail
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"expected one input and one output; got {len(inputs)} and {len(outputs)}."
        )
    return inputs[0]["name"], inputs[0], outputs[0]["name"], outputs[0]


def _quantize_input(x, detail):
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y, detail):
    scale, zero = detail["quantization"]
    if y.dtype in (np.int8, np.uint8, np.int16) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y


def _run(interpreter, index, x):
    interpreter.set_tensor(index, x)
    interpreter.invoke()


def measure_latency(interpreter, runs=10, warmup=2, x=None):
    """Median / min wall time (ms) of `interpreter.invoke()` after `warmup` calls."""
    detail = interpreter.get_input_details()[0]
    if x is None:
        x = np.zeros(detail["shape"], detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs}


def _reference_interpreter(path, **kwargs):
    """The file on TFLite's reference kernels (no XNNPACK): deterministic float32 sums."""
    from ai_edge_litert.interpreter import OpResolverType

    return _interpreter(
        path,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        **kwargs,
    )


class _Comparison:
    """Running max abs difference (with its position) and argmax agreement."""

    def __init__(self):
        self.max_diff, self.worst, self.same, self.total, self.scale = 0.0, None, 0, 0, 0.0

    def add(self, i, out, ref, class_maps):
        if class_maps:
            ref_class, out_class = ref, out
        else:
            diff = np.abs(out.astype(np.float32) - ref)
            self.scale = max(self.scale, float(np.max(np.abs(ref))))
            if self.worst is None or float(diff.max()) > self.max_diff:
                self.max_diff = float(diff.max())
                self.worst = [i, *(int(v) for v in np.unravel_index(diff.argmax(), diff.shape)[1:])]
            ref_class, out_class = ref.argmax(-1), out.argmax(-1)
        self.same += int(np.sum(ref_class == out_class))
        self.total += ref_class.size

    @property
    def agreement(self):
        return self.same / max(self.total, 1)


def verify_tflite(
    model,
    path,
    images=None,
    include_preprocessing=None,
    argmax=None,
    quantize=None,
    tolerance=DEFAULT_TOLERANCE,
    min_agreement=None,
    num_threads=2,
    latency_runs=10,
    diagnose=True,
):
    """Runs a `.tflite` file in the LiteRT interpreter next to its Keras model.

    Checks (on every sample image, at the file's input size):
    * float32 logits: max abs difference <= `tolerance` (1e-4) on TFLite's reference
      kernels, and <= `tolerance * max(1, max |logit|)` with the default XNNPACK CPU delegate
      (which reorders float sums: on Google's 257x257 MobileNetV2 model, logits up to 37,
      XNNPACK and TF differ by up to ~1e-4, the reference kernels by ~4e-5);
    * float16 / dynamic / int8 (and class maps of `argmax` files): argmax agreement with the
      delegate, the fraction of pixels whose class equals the Keras model's; it must reach
      `min_agreement` (default `AGREEMENT_FLOORS`: 0.9 float16, 0.999 float32 class maps;
      dynamic and int8 are only reported).
    On failure the error names the worst output and, for functional models, the first layer
    whose intermediate tensor diverges (the file is re-run on the reference kernels keeping
    all tensors; each tensor is matched by name to its Keras layer, see `diagnose_tflite`).

    Args:
        model: the Keras model the file was exported from.
        path: the `.tflite` file.
        images: RGB images in [0, 255] (folder, array or iterable; resized to the file's
            size), normalised here when the file takes normalised input (fed as given when
            the model's backbone, hence its normalisation, is unknown); None: smooth
            synthetic images.
        include_preprocessing, argmax: as given to `to_tflite`; None: read from the file's
            signature (input `image` = RGB, `normalized_image`; output `class_map`).
        quantize: the file's mode; None: read from its tensor types.
        tolerance: float32 max abs logit difference allowed.
        min_agreement: argmax agreement floor (default per mode, see above).
        num_threads: interpreter threads (delegate run and latency).
        latency_runs: timed invocations (median reported), after 2 warm-up runs.
        diagnose: look for the first diverging layer when the check fails.

    Returns:
        A JSON-serialisable dict: `path`, `size_bytes`, `quantize`, `input` / `output`
        (key, tensor name, shape, dtype, quantization), `op_counts`, `num_ops`,
        `num_images`, `max_abs_diff` (reference kernels; None for class maps),
        `max_abs_diff_delegate`, `worst_position` ([image, y, x, channel]), `tolerance`,
        `argmax_agreement`, `agreement_floor`, `latency_ms` (median), `latency`,
        `num_threads`, `delegate_partitions` (XNNPACK subgraphs: 1 = the whole graph runs
        in XNNPACK; dynamic-range files get many, their hybrid convs stay on the slower
        builtin kernels), `passed`, `worst_output`.

    Raises:
        ValueError: missing / unreadable file or bad images.
        VerificationError: the check failed (the report is `error.report`).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such TFLite file.")
    try:
        delegate = _interpreter(path, num_threads=num_threads)
        delegate.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable TFLite file: {err}") from None
    in_key, in_detail, out_key, out_detail = _signature(delegate)
    if include_preprocessing is None and in_key in (RGB_INPUT, NORMALIZED_INPUT):
        include_preprocessing = in_key == RGB_INPUT
    if argmax is None:
        argmax = out_key == "class_map" or (
            np.issubdtype(out_detail["dtype"], np.integer) and len(out_detail["shape"]) == 3
        )
    exported = _Exported(model, include_preprocessing, argmax)
    mode = quantize if quantize is not None else detect_quantization(delegate)
    _check_quantize(mode)
    shape = tuple(int(d) for d in in_detail["shape"])
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ValueError(f"{path}: input {in_key!r} has shape {shape}, not [1, H, W, 3].")
    hw = shape[1:3]
    samples = synthetic_images(hw) if images is None else _take(images, hw, None, "images")
    check_diff = mode == "none" and not exported.argmax
    reference = _reference_interpreter(path) if check_diff else None
    if reference is not None:
        reference.allocate_tensors()

    on_delegate, on_reference = _Comparison(), _Comparison()
    for i, rgb in enumerate(samples):
        x = exported.to_input(rgb[None])
        ref = exported.reference(x)
        x = _quantize_input(x, in_detail)
        _run(delegate, in_detail["index"], x)
        out = _dequantize(delegate.get_tensor(out_detail["index"]), out_detail)
        if out.shape != ref.shape:
            message = (
                f"{path}: output {out_key!r} has shape {out.shape}, the Keras model gives "
                f"{ref.shape}."
            )
            report = {"path": str(path), "passed": False, "worst_output": out_key}
            raise VerificationError(message, report={**report, "error": message})
        on_delegate.add(i, out, ref, exported.argmax)
        if reference is not None:
            _run(reference, in_detail["index"], x)
            on_reference.add(i, reference.get_tensor(out_detail["index"]), ref, False)

    agreement = on_delegate.agreement
    floor = min_agreement if min_agreement is not None else AGREEMENT_FLOORS[mode]
    problems = []
    delegate_tolerance = None
    if check_diff:
        floor = min_agreement  # float32 logits: the tolerances decide
        delegate_tolerance = tolerance * max(1.0, on_delegate.scale)
        if not on_reference.max_diff <= tolerance:
            problems.append(
                f"max abs difference {on_reference.max_diff:.3g} > tolerance {tolerance:g} on "
                f"the reference kernels (image, y, x, channel = {on_reference.worst})"
            )
        if not on_delegate.max_diff <= delegate_tolerance:
            problems.append(
                f"max abs difference {on_delegate.max_diff:.3g} > {delegate_tolerance:.3g} with "
                f"the XNNPACK delegate (image, y, x, channel = {on_delegate.worst})"
            )
    if floor is not None and agreement < floor:
        problems.append(f"argmax agreement {agreement:.4f} < floor {floor}")
    x0 = _quantize_input(exported.to_input(samples[0][None]), in_detail)
    latency = measure_latency(delegate, runs=latency_runs, x=x0)
    counts = op_counts(path)
    partitions = sum(op["op_name"] == "DELEGATE" for op in delegate._get_ops_details())

    def describe(detail, key):
        scale, zero = detail["quantization"]
        return {
            "key": key,
            "name": detail["name"],
            "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "quantization": None if not scale else [float(scale), int(zero)],
        }

    report = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "quantize": mode,
        "input": describe(in_detail, in_key),
        "output": describe(out_detail, out_key),
        "op_counts": counts,
        "num_ops": sum(counts.values()),
        "verified": True,
        "num_images": len(samples),
        "max_abs_diff": on_reference.max_diff if check_diff else None,
        "max_abs_diff_delegate": None if exported.argmax else on_delegate.max_diff,
        "worst_position": on_reference.worst if check_diff else on_delegate.worst,
        "tolerance": tolerance if check_diff else None,
        "delegate_tolerance": delegate_tolerance,
        "argmax_agreement": agreement,
        "agreement_floor": floor,
        "latency_ms": latency["median_ms"],
        "latency": latency,
        "num_threads": num_threads,
        "delegate_partitions": partitions,
        "passed": not problems,
        "worst_output": out_key,
    }
    if not problems:
        return report

    message = (
        f"{path} ({mode}) does not match the Keras model {model.name!r}: worst output "
        f"{out_key!r} (tensor {out_detail['name']!r}): {'; '.join(problems)}."
    )
    if diagnose:
        try:
            layers = diagnose_tflite(
                exported, path, samples[(report["worst_position"] or [0])[0]], mode
            )
        except Exception as err:  # the diagnosis must not hide the verification error
            layers = {"reason": f"diagnosis failed ({type(err).__name__}: {err})"}
        report["diagnosis"] = layers
        if layers.get("first_diverging"):
            first = layers["first_diverging"]
            message += (
                f" First diverging layer: {first['layer']!r} (TFLite tensor {first['tensor']!r}, "
                f"relative error {first['relative_error']:.3g} > {layers['threshold']:g})."
            )
        elif layers.get("worst"):
            worst = layers["worst"]
            message += (
                f" No intermediate tensor diverges (relative error > {layers['threshold']:g}); "
                f"largest: layer {worst['layer']!r}, {worst['relative_error']:.3g}."
            )
        elif layers.get("reason"):
            message += f" (No layer diagnosis: {layers['reason']}.)"
    report["error"] = message
    raise VerificationError(message, report=report)


# ---------------------------------------------------------------- diagnosis


def _graph_outputs(functional):
    """`{layer name: KerasTensor}` of layers called once in `functional`'s own graph."""
    calls = Counter()
    outputs, nested = {}, {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            layer = node.operation
            calls[layer.name] += 1
            if len(node.outputs) == 1:
                outputs[layer.name] = node.outputs[0]
            if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
                nested[layer.name] = (layer, node.input_tensors)
    return {k: v for k, v in outputs.items() if calls[k] == 1}, nested


def _match_layer(tensor_name, names, nested):
    """Keras layer of a TFLite tensor name: `(nested model name or None, layer name)` or None.

    Converter names look like `model_1/backbone_1/layer_1/Op;...` (fused ops list every
    source op; the first is the last one applied). TF adds `_<n>` suffixes to scopes.
    """
    parts = tensor_name.split(";")[0].split("/")
    container, found = None, None
    for part in parts:
        candidates = (part, re.sub(r"_\d+$", "", part))
        scope_names = names if container is None else nested[container][2]
        for candidate in candidates:
            if container is None and candidate in nested:
                container = candidate
                break
            if candidate in scope_names:
                found = (container, candidate)
                break
    return found


def _single(inputs):
    return inputs[0] if isinstance(inputs, list | tuple) and len(inputs) == 1 else inputs


def _probe(functional, tensors, x, names, chunk=32):
    """Yields `(names, arrays)`: values of `functional`'s KerasTensors for input `x`, a few
    dozen at a time (bounded memory on large models)."""
    for start in range(0, len(tensors), chunk):
        part = tensors[start : start + chunk]
        values = keras.Model(_single(functional.inputs), part)(x, training=False)
        values = values if isinstance(values, list | tuple) else [values]
        yield names[start : start + chunk], [np.asarray(v) for v in values]
    if not tensors:
        yield [], []


def diagnose_tflite(exported, path, rgb, mode="none"):
    """Compares every intermediate tensor of the file with its Keras layer output.

    Returns `{"first_diverging", "worst", "compared", "layers"}` (or `{"reason"}` when not
    feasible: non-functional models). Each entry: layer, TFLite tensor, relative error
    `max |tflite - keras| / max |keras|`. A tensor diverges above
    `DIVERGENCE_THRESHOLDS[mode]`. Tensors are matched by name: the converter names fused
    ops after their last Keras layer (e.g. conv + BN + ReLU -> the ReLU layer).
    """
    core = _inner(exported.core)
    if not hasattr(core, "_nodes_by_depth"):
        return {"reason": f"model {core.name!r} is not a functional Keras model"}
    if isinstance(exported.core, MultiScaleInputs):
        return {"reason": "multi-scale (MSC) models run the network several times"}
    try:
        outer, nested_models = _graph_outputs(core)
        nested = {}
        for name, (layer, inputs) in nested_models.items():
            inner, _ = _graph_outputs(layer)
            nested[name] = (layer, inputs, inner)
    except (AttributeError, TypeError) as err:
        return {"reason": f"cannot read the Keras graph ({err})"}

    interpreter = _reference_interpreter(path, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    x = exported.to_input(rgb[None])
    in_detail = interpreter.get_input_details()[0]
    _run(interpreter, in_detail["index"], _quantize_input(x, in_detail))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    # A Keras layer may lower to several ops (e.g. preprocessing: MUL, SUB): its output is the
    # last tensor, in execution order, named in its scope.
    last = {}
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            detail = tensors[int(index)]
            match = _match_layer(detail["name"], outer, nested)
            if match is not None:
                last.pop(match, None)
                last[match] = detail
    matched = [(detail, *match) for match, detail in last.items()]
    if not matched:
        return {"reason": "no TFLite tensor name matches a Keras layer"}

    # Keras values: the outer graph, then each nested model from its input in the outer graph.
    core_input = x if exported.prepend is None else np.asarray(exported.prepend(x))
    wanted_outer = sorted({layer for _, c, layer in matched if c is None})
    wanted_nested = {}
    for _, c, layer in matched:
        if c is not None:
            wanted_nested.setdefault(c, set()).add(layer)
    keras_values = {}
    for names, values in _probe(core, [outer[n] for n in wanted_outer], core_input, wanted_outer):
        keras_values.update({(None, n): v for n, v in zip(names, values, strict=True)})
    for c, layers in wanted_nested.items():
        model, inputs, inner = nested[c]
        feeds = next(_probe(core, list(inputs), core_input, list(range(len(inputs)))))[1]
        feed = feeds[0] if len(feeds) == 1 else feeds
        layers = sorted(layers)
        for names, values in _probe(model, [inner[n] for n in layers], feed, layers):
            keras_values.update({(c, n): v for n, v in zip(names, values, strict=True)})

    threshold = DIVERGENCE_THRESHOLDS[mode]
    entries = []
    for detail, container, layer in matched:
        ref = keras_values[(container, layer)]
        got = _dequantize(interpreter.get_tensor(detail["index"]), detail)
        if got.shape != ref.shape:
            continue
        error = float(np.max(np.abs(got.astype(np.float32) - ref)))
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        entries.append(
            {
                "layer": layer if container is None else f"{container}/{layer}",
                "tensor": detail["name"].split(";")[0],
                "max_abs_diff": error,
                "relative_error": error / scale,
            }
        )
    if not entries:
        return {"reason": "no matched tensor has the Keras layer's shape"}
    first = next((e for e in entries if e["relative_error"] > threshold), None)
    worst = max(entries, key=lambda e: e["relative_error"])
    return {
        "threshold": threshold,
        "compared": len(entries),
        "first_diverging": first,
        "worst": worst,
        "layers": entries,
    }
