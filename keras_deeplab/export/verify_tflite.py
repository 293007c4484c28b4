"""Checking a written `.tflite` file against the Keras model it was exported from.

`verify_tflite` runs the file in the LiteRT interpreter (default XNNPACK delegate, and the
reference kernels for float32 logits) next to the Keras model on sample images and returns
a JSON-serialisable report; a failed check raises `VerificationError` carrying that report
and, when found, the first diverging layer (`keras_deeplab.export.diagnose`).

Example:

```python
report = verify_tflite(model, "deeplab.tflite", images="images/")
report["max_abs_diff"], report["argmax_agreement"], report["latency_ms"]
```
"""

from pathlib import Path

import numpy as np

from keras_deeplab import _compat
from keras_deeplab.export.diagnose import diagnose_tflite
from keras_deeplab.export.graph import NORMALIZED_INPUT, RGB_INPUT, ExportGraph
from keras_deeplab.export.images import synthetic_images, take_images, to_channels
from keras_deeplab.export.interpreter import (
    dequantize,
    describe_tensor,
    invoke,
    measure_latency,
    quantize_input,
    signature,
)
from keras_deeplab.export.report import VerificationError
from keras_deeplab.tflite_file import detect_quantization, op_counts, open_interpreter

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
DEFAULT_TOLERANCE = 1e-4
# Lowest argmax agreement (fraction of pixels) accepted per mode; None: reported only.
# "none" applies to class maps (`argmax=True`), whose float logits are checked otherwise.
# Integer arithmetic (dynamic-range, int8) moves near-ties of the logits: reported only.
AGREEMENT_FLOORS = {"none": 0.999, "float16": 0.9, "dynamic": None, "int8": None}
# float32 models with indexed unpooling (SegNet), judged by agreement: measured 0.9995+ for a
# trained SegNet-Basic on CamVid val, 0.997 for a random-weight SegNet on noise (near-ties
# everywhere); a broken export agrees on about 1 / num_classes of the pixels.
UNPOOLING_AGREEMENT_FLOOR = 0.99


def _tie_sensitive(model):
    """True for models with indexed unpooling (SegNet), whose float outputs move by a pixel
    where a pooling window's maximum is a near-tie."""
    from keras_deeplab.unpooling import MaxUnpooling

    return any(isinstance(layer, MaxUnpooling) for layer in _compat.all_layers(model))


def check_quantize(quantize):
    """Raises a clear error unless `quantize` is one of `QUANTIZE_MODES`."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}; got {quantize!r}.")


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
    * float32 logits: max abs difference <= `tolerance * max(1, max |logit|)` (1e-4 relative
      to the logit scale: float32 rounding grows with it) on TFLite's reference kernels and
      with the default XNNPACK CPU delegate (which reorders float sums: on Google's 257x257
      MobileNetV2 model, logits up to 37, XNNPACK and TF differ by up to ~1e-4, the
      reference kernels by ~4e-5); models with indexed unpooling (SegNet) by argmax
      agreement >= 0.99 instead (a near-tie in a pooling window moves a value by a pixel);
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
        delegate = open_interpreter(path, num_threads=num_threads)
        delegate.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable TFLite file: {err}") from None
    in_key, in_detail, out_key, out_detail = signature(delegate)
    if include_preprocessing is None and in_key in (RGB_INPUT, NORMALIZED_INPUT):
        include_preprocessing = in_key == RGB_INPUT
    if argmax is None:
        argmax = out_key == "class_map" or (
            np.issubdtype(out_detail["dtype"], np.integer) and len(out_detail["shape"]) == 3
        )
    exported = ExportGraph(model, include_preprocessing, argmax)
    mode = quantize if quantize is not None else detect_quantization(delegate)
    check_quantize(mode)
    shape = tuple(int(d) for d in in_detail["shape"])
    if len(shape) != 4 or shape[0] != 1 or shape[3] != exported.channels:
        raise ValueError(
            f"{path}: input {in_key!r} has shape {shape}, not [1, H, W, {exported.channels}] "
            f"(the model takes {exported.channels}-channel images)."
        )
    hw = shape[1:3]
    samples = synthetic_images(hw) if images is None else take_images(images, hw, None, "images")
    samples = to_channels(samples, exported.channels)
    check_diff = mode == "none" and not exported.argmax
    reference = open_interpreter(path, reference=True) if check_diff else None
    if reference is not None:
        reference.allocate_tensors()

    on_delegate, on_reference = _Comparison(), _Comparison()
    for i, rgb in enumerate(samples):
        x = exported.to_input(rgb[None])
        ref = exported.reference(x)
        x = quantize_input(x, in_detail)
        invoke(delegate, in_detail["index"], x)
        out = dequantize(delegate.get_tensor(out_detail["index"]), out_detail)
        if out.shape != ref.shape:
            message = (
                f"{path}: output {out_key!r} has shape {out.shape}, the Keras model gives "
                f"{ref.shape}."
            )
            report = {"path": str(path), "passed": False, "worst_output": out_key}
            raise VerificationError(message, report={**report, "error": message})
        on_delegate.add(i, out, ref, exported.argmax)
        if reference is not None:
            invoke(reference, in_detail["index"], x)
            on_reference.add(i, reference.get_tensor(out_detail["index"]), ref, False)

    agreement = on_delegate.agreement
    floor = min_agreement if min_agreement is not None else AGREEMENT_FLOORS[mode]
    problems = []
    delegate_tolerance = None
    tie_sensitive = check_diff and _tie_sensitive(model)
    if tie_sensitive:
        # Indexed unpooling moves a value to another pixel when a pooling window's maximum
        # is a near-tie that TFLite rounds the other way: judged by argmax agreement.
        floor = min_agreement if min_agreement is not None else UNPOOLING_AGREEMENT_FLOOR
    elif check_diff:
        floor = min_agreement  # float32 logits: the tolerances decide
        reference_tolerance = tolerance * max(1.0, on_reference.scale)
        delegate_tolerance = tolerance * max(1.0, on_delegate.scale)
        if not on_reference.max_diff <= reference_tolerance:
            problems.append(
                f"max abs difference {on_reference.max_diff:.3g} > tolerance "
                f"{reference_tolerance:.3g} on the reference kernels (image, y, x, channel = "
                f"{on_reference.worst})"
            )
        if not on_delegate.max_diff <= delegate_tolerance:
            problems.append(
                f"max abs difference {on_delegate.max_diff:.3g} > {delegate_tolerance:.3g} with "
                f"the XNNPACK delegate (image, y, x, channel = {on_delegate.worst})"
            )
    if floor is not None and agreement < floor:
        problems.append(f"argmax agreement {agreement:.4f} < floor {floor}")
    x0 = quantize_input(exported.to_input(samples[0][None]), in_detail)
    latency = measure_latency(delegate, runs=latency_runs, x=x0)
    counts = op_counts(path)
    partitions = sum(op["op_name"] == "DELEGATE" for op in _compat.tflite_ops(delegate))

    report = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "quantize": mode,
        "input": describe_tensor(in_detail, in_key),
        "output": describe_tensor(out_detail, out_key),
        "op_counts": counts,
        "num_ops": sum(counts.values()),
        "verified": True,
        "num_images": len(samples),
        "max_abs_diff": on_reference.max_diff if check_diff else None,
        "max_abs_diff_delegate": None if exported.argmax else on_delegate.max_diff,
        "worst_position": on_reference.worst if check_diff else on_delegate.worst,
        "tolerance": tolerance if check_diff else None,
        "criterion": "argmax agreement (indexed unpooling)" if tie_sensitive else None,
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
