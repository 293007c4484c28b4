"""TFLite export at a fixed input size, verified against the Keras model after writing.

The model is traced at `[1, H, W, 3]`, its variables frozen into constants, saved as a
variable-free SavedModel with the `serving_default` signature and converted with
`tf.lite.TFLiteConverter.from_saved_model` (TFLite guide "Post-training quantization",
https://ai.google.dev/edge/litert/models/post_training_quantization): float32, float16
weights, dynamic-range int8 weights, or full-integer int8 with a representative dataset.
The graph is checked before it is written: dilated convolutions must be native dilated
CONV_2D / DEPTHWISE_CONV_2D (no SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND) and every
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

import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_deeplab.data.augment import padded_size
from keras_deeplab.export.graph import ExportGraph
from keras_deeplab.export.images import (
    DEFAULT_SAMPLE_IMAGES,
    synthetic_images,
    take_images,
    to_channels,
)
from keras_deeplab.export.interpreter import SIGNATURE
from keras_deeplab.export.labels import labels_path_for, labels_text, resolve_labels
from keras_deeplab.export.model_info import aligned_stride, inner_model, resize_conventions
from keras_deeplab.export.report import VerificationError, atomic_write_bytes, write_report
from keras_deeplab.export.rewrite import optimize_for_export
from keras_deeplab.export.verify_tflite import (
    AGREEMENT_FLOORS,
    DEFAULT_TOLERANCE,
    QUANTIZE_MODES,
    check_quantize,
    verify_tflite,
)
from keras_deeplab.layers import force_native_dilation
from keras_deeplab.tflite_file import op_counts, op_options

FORBIDDEN_OPS = ("SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")
DEFAULT_REPRESENTATIVE_STEPS = 100


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


def _io_type(int8_io):
    if int8_io in (False, None):
        return None
    if int8_io is True or int8_io == "int8":
        return tf.int8
    if int8_io == "uint8":
        return tf.uint8
    raise ValueError(f"int8_io must be False, True / 'int8' or 'uint8'; got {int8_io!r}.")


def _convert(exported, hw, quantize, representative, int8_io, network=None):
    """TFLite flatbuffer bytes of `exported` (run through `network`) at `[1, H, W, 3]`."""
    spec = tf.TensorSpec([1, *hw, exported.channels], tf.float32, name=exported.input_key)
    network = exported.core if network is None else network

    @tf.function(input_signature=[spec], autograph=False)
    def serve(image):
        return exported.forward(image, network)

    # The traced graph with its variables frozen into constants, saved without them: 4x faster
    # than exporting the Keras model (which saves and reloads every variable), same ops, same
    # signature ("serving_default": image -> output key).
    with force_native_dilation():  # TFLite's DEPTHWISE_CONV_2D takes dilations everywhere
        frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    module = tf.Module()
    module.serve = tf.function(
        lambda image: {exported.output_key: frozen(image)[0]}, input_signature=[spec]
    )
    workdir = tempfile.mkdtemp(prefix="keras_deeplab_tflite_")
    try:
        tf.saved_model.save(
            module, workdir, signatures={SIGNATURE: module.serve.get_concrete_function()}
        )
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


def _float32(model):
    """`model` computing in float32: a model trained in mixed precision is rebuilt with the
    float32 policy (weights copied); TFLite's float, float16 and int8 paths start from it."""
    from keras_deeplab.optimize import with_dtype_policy
    from keras_deeplab.precision import inference_policy

    policy = inference_policy(model, "float32")
    return model if policy is None else with_dtype_policy(model, policy)


# The start of `warn_unaligned`'s message, for `warnings.filterwarnings` where any size will do.
UNALIGNED_WARNING = r"input_size .* is not k \* output_stride \+ 1"


def warn_unaligned(model, hw):
    """Warns when an align-corners model is exported at a size other than `k * OS + 1`.

    The official DeepLab models (align-corners resizes) line their feature maps up with the
    pixels only at such sizes (513, 257, 97, ...): elsewhere the labels drift by up to a stride.
    """
    stride = aligned_stride(model)
    if stride is None:
        return
    aligned = tuple(padded_size(int(d), stride) for d in hw)
    if aligned != tuple(hw):
        warnings.warn(
            f"input_size {hw[0]}x{hw[1]} is not k * output_stride + 1 (output_stride {stride}): "
            "the model's align-corners resizes will not line up with the pixels and its labels "
            "degrade (the demo's shapes model: held-out mIoU 0.85 at 97x97, 0.71 at 96x96). "
            f"Export at {aligned[0]}x{aligned[1]} and pad images bottom/right with the mean "
            "pixel, as keras_deeplab.evaluation.Segmenter does.",
            stacklevel=3,
        )


def check_graph(content, where="the converted model", half_pixel=False):
    """Op counts of a flatbuffer; raises when dilations or resizes were not kept native.

    Every RESIZE_BILINEAR must be align_corners=True, or half-pixel (align_corners=False,
    half_pixel_centers=True) when `half_pixel` (the model has such resizes); the legacy TF1
    convention (both False) is never right.
    """
    counts = op_counts(content=content)
    bad = {op: counts[op] for op in FORBIDDEN_OPS if op in counts}
    if bad:
        raise RuntimeError(
            f"{where} contains {bad}: a dilated convolution was lowered to space-to-batch "
            "instead of a native dilated CONV_2D / DEPTHWISE_CONV_2D. Build models with "
            "keras_deeplab.layers.Conv2D / DepthwiseConv2D (not keras.layers')."
        )
    resizes = [op for op in op_options(content=content) if op["op"] == "RESIZE_BILINEAR"]

    def allowed(op):
        corners, half = bool(op.get("align_corners")), bool(op.get("half_pixel_centers"))
        return (corners and not half) or (half_pixel and half and not corners)

    wrong = [i for i, op in enumerate(resizes) if not allowed(op)]
    if wrong:
        kinds = "align_corners=True" + (" or half-pixel centres" if half_pixel else "")
        raise RuntimeError(
            f"{where}: RESIZE_BILINEAR op(s) {wrong} of {len(resizes)} do not use {kinds} as "
            "the model's resizes do; use keras_deeplab.layers.ResizeBilinear."
        )
    return counts


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
    check_quantize(quantize)
    hw = _input_hw(input_size)
    io_type = _io_type(int8_io)
    if io_type is not None and quantize != "int8":
        raise ValueError(f"int8_io needs quantize='int8' (got quantize={quantize!r}).")
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"{path}: the output file name must end with '.tflite'.")
    model = _float32(model)
    exported = ExportGraph(model, include_preprocessing, argmax)
    built = tuple(inner_model(model).inputs[0].shape[1:3])
    if any(d is not None and d != s for d, s in zip(built, hw, strict=True)):
        raise ValueError(
            f"Model {model.name!r} is built for {built[0]}x{built[1]} inputs; export it with "
            f"input_size={built} or rebuild it with input_shape=(None, None, 3)."
        )
    labels = resolve_labels(labels, exported.num_classes)
    warn_unaligned(model, hw)

    representative = None
    if quantize == "int8":
        if representative_data is None:
            raise ValueError(
                "quantize='int8' needs representative_data: a folder of images or an iterable "
                "of RGB images in [0, 255] to calibrate the activation ranges."
            )
        representative = take_images(
            representative_data, hw, representative_steps, "representative_data"
        )
    if sample_images is not None:
        samples = take_images(sample_images, hw, None, "sample_images")
    elif representative is not None:
        samples = representative[:DEFAULT_SAMPLE_IMAGES]
    elif representative_data is not None:
        samples = take_images(representative_data, hw, DEFAULT_SAMPLE_IMAGES, "representative_data")
    else:
        samples = synthetic_images(hw)
    samples = to_channels(samples, exported.channels)
    if representative is not None:
        representative = to_channels(representative, exported.channels)

    start = time.perf_counter()
    network, applied = optimize_for_export(exported.core, hw) if optimize else (None, [])
    content = _convert(exported, hw, quantize, representative, io_type, network)
    half_pixel = "half_pixel" in resize_conventions(model)
    counts = check_graph(content, f"TFLite graph of model {model.name!r}", half_pixel)
    atomic_write_bytes(path, content)
    labels_path = atomic_write_bytes(labels_path_for(path), labels_text(labels).encode())
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


__all__ = [
    "AGREEMENT_FLOORS",
    "DEFAULT_TOLERANCE",
    "QUANTIZE_MODES",
    "check_graph",
    "op_counts",
    "op_options",
    "synthetic_images",
    "to_tflite",
    "verify_tflite",
]
