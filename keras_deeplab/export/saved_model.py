"""SavedModel export with Model-Garden-style serving signatures, verified after writing.

Follows the serving interface of the TF Model Garden exporters
(`tensorflow/models` `official/vision/serving/semantic_segmentation.py`): an image
tensor signature and an encoded-bytes signature with the preprocessing inside the
graph. Signatures (all shapes dynamic):

* `serving_default`: `images` uint8 `[B, H, W, 3]` RGB -> `class_map` int32 `[B, H, W]`
  and `probabilities` float32 `[B, H, W, C]` (at the input size).
* `serving_bytes`: `image_bytes` string `[B]` (JPEG/PNG/GIF/BMP) -> `class_map`,
  `probabilities` and `image_size` int32 `[B, 2]` (height, width). Each image runs at its
  own size; outputs are padded to the batch's largest height/width (`class_map` with -1,
  `probabilities` with 0): crop image `i` to `image_size[i]`.
* Models with align-corners resizes and an output stride (the DeepLab family) run each image of
  the two RGB signatures padded bottom/right with the mean pixel to `k * OS + 1`, cropped back
  (the official evaluation's rule, `Segmenter`'s).
* `serve`: the Keras model itself, float32 `[B, H, W, 3]` in the model's input convention
  -> `logits` (or `probabilities` when the model ends with an activation).

Example:

```python
model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", weights="w.weights.h5")
report = keras_deeplab.export.to_saved_model(model, "exported/deeplab")
served = tf.saved_model.load("exported/deeplab").signatures["serving_default"]
class_map = served(images=tf.zeros([1, 257, 257, 3], tf.uint8))["class_map"]
```
"""

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_deeplab.export.labels import labels_text, resolve_labels
from keras_deeplab.export.model_info import num_classes_of, output_activation
from keras_deeplab.export.report import (
    DiskFullError,
    VerificationError,
    disk_full_message,
    is_disk_full,
    pid_alive,
    write_report,
)
from keras_deeplab.export.serving import build_archive, serving_preprocessing, signature_summary
from keras_deeplab.export.verify_saved_model import (
    DEFAULT_TOLERANCE,
    directory_size,
    verify_saved_model,
)

LABELS_FILE = "labels.txt"
# Files against the Keras model in bfloat16/float16 (TF picks other kernels than Keras' run).
REDUCED_TOLERANCE = 5e-2
_archive = build_archive  # looked up at call time: tests replace it to simulate failures


# ---------------------------------------------------------------- precision


def model_fingerprint(model):
    """SHA-1 of a model's name, config and weights: the key of a cached precision verdict."""
    import hashlib
    import json

    digest = hashlib.sha1(model.name.encode())
    with contextlib.suppress(Exception):  # some Keras models have no serialisable config
        digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _precision_check(model, precision, sample_images, report_path):
    """`verify_precision` on the verification images, or the verdict cached in `report_path`
    for the same model fingerprint and precision."""
    import json

    from keras_deeplab.evaluation.segmenter import verify_precision
    from keras_deeplab.export.images import uint8_images
    from keras_deeplab.export.model_info import input_size_of

    fingerprint = model_fingerprint(model)
    if report_path is not None and Path(report_path).is_file():
        with contextlib.suppress(ValueError, OSError):
            cached = json.loads(Path(report_path).read_text()).get("precision_check") or {}
            if cached.get("fingerprint") == fingerprint and cached.get("precision") == precision:
                return {**cached, "cached": True}
    images = uint8_images(sample_images, input_size_of(model))
    check = verify_precision(model, precision, images)
    return {**check, "fingerprint": fingerprint, "cached": False}


# ---------------------------------------------------------------- files


def _check_target(export_dir, overwrite):
    if export_dir.exists():
        if not export_dir.is_dir():
            raise FileExistsError(f"{export_dir} exists and is not a directory.")
        if any(export_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{export_dir} exists and is not empty; choose another output directory or pass "
                "overwrite=True (CLI: --overwrite)."
            )


_RENAME_EXCHANGE = 2  # Linux <linux/fs.h>: renameat2 flag, swap two existing paths
_RENAME_SWAP = 2  # macOS <stdio.h>: renamex_np flag, the same
_AT_FDCWD = -100
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _exchange(a, b):
    """Swaps two existing paths in one atomic step; False (nothing done) where unsupported.

    Linux `renameat2(RENAME_EXCHANGE)` (kernel 3.15+, ext4/xfs/btrfs/tmpfs/overlayfs...) or
    macOS `renamex_np(RENAME_SWAP)` (APFS). Unsupported: other systems, C libraries without
    the call, file systems refusing the flag (e.g. some network file systems).
    """
    if not sys.platform.startswith(("linux", "darwin")):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform == "darwin":
            result = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
        else:
            result = libc.renameat2(
                _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE
            )
    except (OSError, AttributeError):  # no such C function
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path):
    if path.is_symlink():  # the target was a symlink: drop the link, not what it points to
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _publish(tmp, export_dir):
    """Moves the finished export `tmp` to `export_dir`, which is never missing meanwhile.

    A new (or empty) target is one rename. An existing export is exchanged with `tmp`
    atomically (`_exchange`), then the old export, now at `tmp`'s hidden name, is deleted.
    Without an atomic exchange: the old directory is renamed aside, the new one into place
    (a kill between the two renames leaves `export_dir` missing until the next export
    moves the old one back).
    """
    try:
        os.rename(tmp, export_dir)
        return
    except OSError as error:  # a non-empty directory is there (Windows: any directory)
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        if not export_dir.is_dir():  # (a symlink to a directory is replaced like one)
            raise
    if _exchange(tmp, export_dir):
        _remove(tmp)  # the old export
        return
    aside = Path(
        tempfile.mkdtemp(prefix=f".{export_dir.name}.old-{os.getpid()}-", dir=export_dir.parent)
    )
    os.rename(export_dir, aside / "old")
    try:
        os.rename(tmp, export_dir)
    except OSError:
        os.rename(aside / "old", export_dir)
        raise
    _remove(aside / "old")
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_temporaries(export_dir):
    """Deletes the hidden siblings `.<name>.partial-<pid>-*` / `.<name>.old-<pid>-*` of writers
    that were killed (their process is gone). A killed fallback swap's old export
    (`.<name>.old-<pid>-*/old`) is moved back when `export_dir` is missing."""
    for kind in ("partial", "old"):
        prefix = f".{export_dir.name}.{kind}-"
        for path in export_dir.parent.glob(f"{glob.escape(prefix)}*-*"):
            pid = path.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            old = path / "old"
            if kind == "old" and old.is_dir() and not os.path.lexists(export_dir):
                os.rename(old, export_dir)
            _remove(path)


def to_saved_model(
    model,
    export_dir,
    verify=True,
    sample_images=None,
    report_path=None,
    labels=None,
    preprocessing=None,
    overwrite=False,
    tolerance=None,
    optimize=False,
    outputs=None,
    precision="float32",
):
    """Exports `model` as a SavedModel with serving signatures, then verifies it.

    The export is written to a hidden sibling directory (`.<name>.partial-<pid>-*`), verified
    there, and only then moved to `export_dir`: an interrupted or failed export leaves
    `export_dir` as it was. With `overwrite=True` the old and the new export are exchanged in
    one atomic step (Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`), so
    `export_dir` is a plain directory holding the complete old or the complete new export at
    every instant, even if the process is killed; `tf.saved_model.load(export_dir)` and
    `keras.layers.TFSMLayer(export_dir, ...)` started before or after the swap never find it
    missing or half-written (one running across the swap may fail: load again). Where the
    file system has no atomic exchange (Windows, some network file systems) the old directory
    is renamed aside first: a kill between the two renames leaves `export_dir` missing until
    the next export to it moves the old one back. Hidden temporaries of killed writers are
    removed by the next export to the same `export_dir`. `labels.txt` (one class name per
    line) is written inside the directory.

    Args:
        model: a keras_deeplab `SegmentationModel` (`MultiScaleInputs` included) or another
            Keras model taking `[B, H, W, 3]` images (see `preprocessing`, `outputs`).
        export_dir: output directory; must not exist or be empty unless `overwrite`.
        verify: run `verify_saved_model` on the written files (raises `VerificationError`).
        sample_images: images for the verification (see `verify_saved_model`).
        report_path: optional JSON file for the report (written also when verification fails).
        labels: class names (a list or a text file, one per line); default: the VOC names
            for 21 classes, else `class_<i>`.
        preprocessing: only for models built with `include_preprocessing=False`: the
            normalisation the serving graph applies to RGB [0, 255], "symmetric" or "caffe".
        overwrite: replace a non-empty `export_dir` (atomically, see above); without it an
            existing non-empty `export_dir` raises `FileExistsError`.
        tolerance: max abs difference allowed for logits and probabilities (default
            `DEFAULT_TOLERANCE` = 1e-4 in float32, `REDUCED_TOLERANCE` = 0.05 in reduced
            precision: two bfloat16 runs of one graph differ by roundings of ~0.4%).
        optimize: serve `keras_deeplab.optimize.optimize_for_inference(model)` instead of
            `model`: BatchNorm folded into the convolutions and large-rate dilated depthwise
            convs through space-to-batch (inference-only, faster on CPU, see the README's
            Benchmarks; equal up to float rounding, about 1e-5 on probabilities). The files
            are still verified against `model` itself.
        outputs: only for Keras models that are not keras_deeplab `SegmentationModel`s
            (which know their activation): what `model` returns, `"logits"` (assumed when
            None), `"softmax"` or `"sigmoid"`, so `probabilities` is not a softmax of
            probabilities.
        precision: `"float32"` (default; a model trained under a mixed policy is rebuilt in
            float32),
            `"bfloat16"`, `"float16"` or `"auto"` (`keras_deeplab.precision`). Reduced
            precision serves `optimize_for_inference(model, dtype_policy=...)` (outputs and
            softmax/argmax in float32); the files are verified against that reduced Keras
            model, and the reduced model's argmax is compared with float32 `model` on the
            verification images once per model weights and precision (`precision_check` in
            the report: agreement; reused from an existing `report_path` with the same
            model fingerprint).

    Returns:
        The report dict (see `verify_saved_model`; without verification: path, size,
        signatures and labels only), with `precision` (and `precision_check`).

    Example:
        `to_saved_model(model, "exported/deeplab", report_path="exported/deeplab.report.json")`
    """
    from keras_deeplab.precision import describe_choice, inference_policy, resolve_precision

    export_dir = Path(export_dir).expanduser().absolute()
    requested = precision
    precision = resolve_precision(precision)  # bad values fail before anything is written
    policy = inference_policy(model, precision)
    reduced = precision != "float32"
    if tolerance is None:
        tolerance = REDUCED_TOLERANCE if reduced else DEFAULT_TOLERANCE
    preprocessing_mode = serving_preprocessing(model, preprocessing)
    output_activation(model, outputs)  # bad `outputs` fail before anything is written
    labels = resolve_labels(labels, num_classes_of(model))
    _remove_stale_temporaries(export_dir)
    _check_target(export_dir, overwrite)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{export_dir.name}.partial-{os.getpid()}-", dir=export_dir.parent)
    )
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export must be readable
        start = time.perf_counter()
        try:
            served = model
            if optimize or policy is not None:
                from keras_deeplab.optimize import optimize_for_inference

                served = optimize_for_inference(model, dtype_policy=policy)
            _archive(served, preprocessing_mode, outputs).write_out(str(tmp))
            (tmp / LABELS_FILE).write_text(labels_text(labels))
        except (OSError, tf.errors.OpError) as error:
            if not is_disk_full(error):
                raise
            kept = "the existing export is unchanged" if export_dir.exists() else "nothing was left"
            raise DiskFullError(disk_full_message(export_dir, kept)) from None
        export_seconds = time.perf_counter() - start
        if verify:
            try:
                report = verify_saved_model(
                    model if policy is None else served,  # files == the Keras model served
                    tmp,
                    sample_images,
                    preprocessing=preprocessing,
                    tolerance=tolerance,
                    outputs=outputs,
                )
            except VerificationError as error:
                report = getattr(error, "report", None)
                if report is not None:
                    report.update(path=str(export_dir), published=False)
                    if report_path is not None:
                        write_report(report_path, report)
                raise
        else:
            loaded = tf.saved_model.load(str(tmp))
            report = {
                "format": "saved_model",
                "verified": False,
                "size_bytes": directory_size(tmp),
                "signatures": signature_summary(loaded),
            }
        report.update(
            path=str(export_dir),
            labels_path=str(export_dir / LABELS_FILE),
            num_classes=len(labels),
            export_seconds=round(export_seconds, 3),
            optimized=bool(optimize or policy is not None),
            precision=precision,
            precision_choice=describe_choice(requested),
            published=True,
        )
        if reduced:
            report["precision_check"] = _precision_check(
                model, precision, sample_images, report_path
            )
        _publish(tmp, export_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if report_path is not None:
        write_report(report_path, report)
    return report
