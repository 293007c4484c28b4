"""Checking a written SavedModel against the Keras model it was exported from.

`verify_saved_model` calls every serving signature (`keras_deeplab.export.serving`) on
sample images next to the Keras model and returns a JSON-serialisable report; a failed
check raises `VerificationError` carrying that report.

Example:

```python
report = verify_saved_model(model, "exported/deeplab")
report["max_abs_diff"], report["class_map_agreement"], report["latency_ms"]
```
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_deeplab.data.augment import pad_to_grid
from keras_deeplab.export.images import overlap_tiled, to_channels, uint8_images
from keras_deeplab.export.model_info import (
    aligned_stride,
    input_channels_of,
    input_size_of,
    output_activation,
)
from keras_deeplab.export.report import VerificationError, time_calls
from keras_deeplab.export.serving import SIGNATURES, serving_preprocessing, signature_summary
from keras_deeplab.layers import Preprocessing

DEFAULT_TOLERANCE = 1e-4


def directory_size(path):
    """Total bytes of the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _compare(name, reference, served, class_map, tolerance, stats):
    """Accumulates max abs diff of probabilities and class-map agreement (ties excused).

    `reference` is `(raw, probabilities)` of the Keras model; the class map is the argmax of
    the raw outputs, and a pixel whose top-2 raw scores are within 2 * tolerance is a tie.
    """
    raw, probabilities = reference
    diff = float(np.max(np.abs(served - probabilities))) if served.size else 0.0
    key = f"{name}/probabilities"
    stats["max_abs_diff"][key] = max(stats["max_abs_diff"].get(key, 0.0), diff)
    expected = raw.argmax(-1)
    if raw.shape[-1] > 1:
        top2 = np.sort(raw, axis=-1)[..., -2:]
        tie = top2[..., 1] - top2[..., 0] <= 2 * tolerance
    else:
        tie = np.zeros(expected.shape, bool)
    mismatch = class_map != expected
    counts = stats["_counts"].setdefault(name, [0, 0, 0])
    counts[0] += int(mismatch.size)
    counts[1] += int((~mismatch).sum())
    counts[2] += int((mismatch & ~tie).sum())


def verify_saved_model(
    model, export_dir, images=None, preprocessing=None, tolerance=DEFAULT_TOLERANCE, outputs=None
):
    """Runs the written SavedModel's signatures on `images` against the Keras model.

    `serving_default` is called on each group of same-size images (one batch per size),
    `serving_bytes` on all images PNG-encoded in one batch (mixed sizes), `serve` on each
    group in the model's own input convention. Probabilities (and `serve` logits) must match
    within `tolerance`, class maps must agree everywhere except at ties (top-2 reference
    probabilities within `tolerance`).

    Args:
        model: the Keras model that was exported.
        export_dir: the SavedModel directory.
        images: RGB uint8 images `[H, W, 3]` (a list, possibly of different sizes, or an
            array `[N, H, W, 3]`); default `sample_images()`.
        preprocessing: as in `to_saved_model` (models without a preprocessing layer).
        tolerance: max abs difference allowed.
        outputs: as in `to_saved_model` (models that are not `SegmentationModel`s).

    Returns:
        A JSON-serialisable dict: `format`, `path`, `size_bytes`, `signatures`,
        `num_images`, `image_sizes`, `tolerance`, `max_abs_diff` (per
        `signature/output`), `class_map_agreement` and `class_map_mismatches` (non-tie,
        per signature), `latency_ms` (per signature and `keras`, one image, median of 3),
        `worst_output`, `passed`.

    Raises:
        VerificationError: naming the worst output when a difference exceeds `tolerance`
            (the report is attached as `error.report`).
    """
    export_dir = Path(export_dir)
    images = uint8_images(images, input_size_of(model))
    images = overlap_tiled(to_channels(images, input_channels_of(model)), model)
    mode = serving_preprocessing(model, preprocessing)
    activation = output_activation(model, outputs)
    normalise = None if mode is None else Preprocessing(mode)
    loaded = tf.saved_model.load(str(export_dir))
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise VerificationError(
            f"SavedModel {export_dir} lacks signature(s) {missing}; it has "
            f"{sorted(loaded.signatures)}. Re-export with keras_deeplab.export.to_saved_model."
        )
    signatures = {name: loaded.signatures[name] for name in SIGNATURES}
    raw_key = "probabilities" if activation else "logits"

    stride = aligned_stride(model) if None in input_size_of(model) else None

    def keras_raw(batch, pad=False):
        """The model's output on `batch`; with `pad`, as the RGB signatures run it: padded to
        `k * OS + 1` with the mean pixel (align-corners models), cropped back."""
        h, w = batch.shape[1:3]
        x = tf.constant(pad_to_grid(batch, stride) if pad and stride else batch, tf.float32)
        x = x if normalise is None else normalise(x)
        raw = np.asarray(tf.cast(model(x, training=False), tf.float32))
        return raw[:, :h, :w] if pad and stride is not None else raw

    def to_probabilities(raw):
        return raw if activation else np.asarray(tf.nn.softmax(raw, axis=-1))

    stats = {"max_abs_diff": {}, "_counts": {}}
    groups = {}
    for image in images:
        groups.setdefault(image.shape, []).append(image)
    references = {}
    for shape, group in groups.items():
        batch = np.stack(group)
        raw = keras_raw(batch)
        padded = keras_raw(batch, pad=True) if stride is not None else raw
        references[shape] = (padded, to_probabilities(padded))
        out = signatures["serving_default"](images=tf.constant(batch))
        _compare(
            "serving_default",
            references[shape],
            out["probabilities"].numpy(),
            out["class_map"].numpy(),
            tolerance,
            stats,
        )
        model_input = batch.astype("float32")
        if normalise is not None:
            model_input = np.asarray(normalise(model_input))
        served_raw = signatures["serve"](images=tf.constant(model_input))[raw_key].numpy()
        key = f"serve/{raw_key}"
        diff = float(np.max(np.abs(served_raw - raw)))
        stats["max_abs_diff"][key] = max(stats["max_abs_diff"].get(key, 0.0), diff)

    encoded = [tf.io.encode_png(image).numpy() for image in images]
    out = signatures["serving_bytes"](image_bytes=tf.constant(encoded))
    sizes = out["image_size"].numpy()
    seen = {shape: 0 for shape in groups}
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        if tuple(sizes[i]) != (h, w):
            raise VerificationError(
                f"SavedModel {export_dir}: serving_bytes/image_size of image {i} is "
                f"{tuple(sizes[i])}, expected {(h, w)}."
            )
        j = seen[image.shape]
        seen[image.shape] += 1
        reference = tuple(r[j] for r in references[image.shape])
        oh, ow = reference[0].shape[:2]  # the image's size but for models with smaller logits
        _compare(
            "serving_bytes",
            reference,
            out["probabilities"].numpy()[i, :oh, :ow],
            out["class_map"].numpy()[i, :oh, :ow],
            tolerance,
            stats,
        )

    first = images[0][np.newaxis]
    first_float = first.astype("float32")
    first_model_input = first_float if normalise is None else np.asarray(normalise(first_float))
    calls = {
        "keras": lambda: model(first_model_input, training=False),
        "serving_default": lambda: signatures["serving_default"](images=tf.constant(first)),
        "serving_bytes": lambda: signatures["serving_bytes"](image_bytes=tf.constant(encoded[:1])),
        "serve": lambda: signatures["serve"](images=tf.constant(first_model_input)),
    }
    # One image, median of 3 after a warm-up call (first calls trace / allocate).
    latency = {
        name: round(time_calls(fn, runs=3, warmup=1)["median_ms"], 3) for name, fn in calls.items()
    }

    counts = stats.pop("_counts")
    agreement = {name: round(c[1] / max(c[0], 1), 6) for name, c in counts.items()}
    mismatches = {name: c[2] for name, c in counts.items()}
    max_abs_diff = stats["max_abs_diff"]
    worst = max(max_abs_diff, key=max_abs_diff.get)
    failed = [k for k, v in max_abs_diff.items() if v > tolerance]
    failed += [f"{name}/class_map" for name, n in mismatches.items() if n]
    if failed and worst not in failed:
        worst = failed[0]  # only class maps disagree
    report = {
        "format": "saved_model",
        "path": str(export_dir),
        "verified": True,
        "size_bytes": directory_size(export_dir),
        "signatures": signature_summary(loaded),
        "num_images": len(images),
        "image_sizes": [list(image.shape[:2]) for image in images],
        "tolerance": tolerance,
        "max_abs_diff": max_abs_diff,
        "class_map_agreement": agreement,
        "class_map_mismatches": mismatches,
        "latency_ms": latency,
        "latency_image_size": list(images[0].shape[:2]),
        "worst_output": worst,
        "passed": not failed,
    }
    if failed:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in sorted(max_abs_diff.items()))
        error = VerificationError(
            f"SavedModel {export_dir} does not match the Keras model: worst output {worst} "
            f"(max abs diffs: {diffs}; tolerance {tolerance:g}); class-map agreement "
            f"{agreement}, non-tie mismatches {mismatches}.",
            report=report,
        )
        raise error
    return report
