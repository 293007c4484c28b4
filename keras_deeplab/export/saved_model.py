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

import ctypes
import errno
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.data.palette import VOC_CLASSES
from keras_deeplab.export.report import (
    DiskFullError,
    VerificationError,
    disk_full_message,
    is_disk_full,
    write_report,
)
from keras_deeplab.layers import PREPROCESSING_MODES, Preprocessing
from keras_deeplab.msc import MultiScaleInputs

VOC_LABELS = tuple(VOC_CLASSES)
LABELS_FILE = "labels.txt"
SIGNATURES = ("serving_default", "serving_bytes", "serve")
DEFAULT_TOLERANCE = 1e-4


# ---------------------------------------------------------------- model facts


def model_preprocessing(model):
    """Mode of the model's own `preprocessing` layer ("symmetric"/"caffe"), or None."""
    if isinstance(model, MultiScaleInputs):
        return model_preprocessing(model.model)
    try:
        layer = model.get_layer("preprocessing")
    except ValueError:
        return None
    return getattr(layer, "mode", None)


def _output_activation(model):
    """None, "softmax" or "sigmoid": the activation the model applies to its logits."""
    if isinstance(model, MultiScaleInputs):
        return model.activation
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    if isinstance(last, keras.layers.Activation):
        name = keras.activations.serialize(last.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", "")
        return name if name in ("softmax", "sigmoid") else None
    return None


def input_size_of(model):
    """`(H, W)` of the model's input; None for dynamic dimensions."""
    if isinstance(model, MultiScaleInputs):
        return input_size_of(model.model)
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None, None
    return tuple(None if d is None else int(d) for d in shape[1:3])


def num_classes_of(model):
    """Channel count of the model's output."""
    h, w = input_size_of(model)
    return int(model.compute_output_shape((1, h or 33, w or 33, 3))[-1])


def serving_preprocessing(model, preprocessing=None):
    """The normalisation from RGB [0, 255] the serving graph adds before the model.

    Returns None when the model normalises inside (its `preprocessing` layer), else
    the explicit `preprocessing` mode. A model built with `include_preprocessing=False`
    cannot tell its normalisation, so `preprocessing` is required then.
    """
    own = model_preprocessing(model)
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"preprocessing must be one of {PREPROCESSING_MODES} or None; got {preprocessing!r}."
        )
    if own is not None:
        if preprocessing not in (None, own):
            raise ValueError(
                f"Model {model.name!r} already normalises its input (layer 'preprocessing', "
                f"mode {own!r}); drop preprocessing={preprocessing!r} or it would be applied twice."
            )
        return None
    if preprocessing is None:
        raise ValueError(
            f"Model {model.name!r} has no 'preprocessing' layer (built with "
            "include_preprocessing=False), so the serving graph cannot know how to normalise "
            "RGB [0, 255] images: pass preprocessing='symmetric' ([-1, 1]: xception, mobilenetv2, "
            "*_beta ResNets) or 'caffe' (BGR mean subtraction: resnet50/101, vgg16), or rebuild "
            "the model with include_preprocessing=True."
        )
    return preprocessing


def default_labels(num_classes):
    """PASCAL VOC names for 21 classes, `class_<i>` otherwise."""
    if num_classes == len(VOC_LABELS):
        return list(VOC_LABELS)
    return [f"class_{i}" for i in range(num_classes)]


def _resolve_labels(labels, num_classes):
    if labels is None:
        return default_labels(num_classes)
    if isinstance(labels, str | os.PathLike):
        labels = Path(labels).read_text().splitlines()
    labels = [str(label).strip() for label in labels]
    if len(labels) != num_classes or any(not label or "\n" in label for label in labels):
        raise ValueError(
            f"labels must be {num_classes} non-empty names (one per model output channel); "
            f"got {len(labels)}."
        )
    return labels


# ---------------------------------------------------------------- serving graph


class _Serving:
    """The three serving functions (plain Python; ExportArchive wraps them in tf.function)."""

    def __init__(self, model, preprocessing):
        self.model = model
        self.activation = _output_activation(model)
        self.normalise = None if preprocessing is None else Preprocessing(preprocessing)
        self.num_classes = num_classes_of(model)
        self.size = input_size_of(model)

    def _outputs(self, rgb):
        x = rgb if self.normalise is None else self.normalise(rgb)
        scores = tf.cast(self.model(x, training=False), tf.float32)
        class_map = tf.argmax(scores, axis=-1, output_type=tf.int32)
        probabilities = scores if self.activation else tf.nn.softmax(scores, axis=-1)
        return {"class_map": class_map, "probabilities": probabilities}

    def images(self, images):
        return self._outputs(tf.cast(images, tf.float32))

    def _one_encoded(self, image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        if None not in self.size:
            message = f"this model was exported for {self.size[0]}x{self.size[1]} images only"
            check = tf.debugging.assert_equal(tf.shape(image)[:2], self.size, message=message)
            with tf.control_dependencies([check]):
                image = tf.identity(image)
        outputs = self._outputs(tf.cast(image, tf.float32)[tf.newaxis])
        return {
            "class_map": tf.RaggedTensor.from_tensor(outputs["class_map"][0], ragged_rank=1),
            "probabilities": tf.RaggedTensor.from_tensor(
                outputs["probabilities"][0], ragged_rank=1
            ),
            "image_size": tf.shape(image, out_type=tf.int32)[:2],
        }

    def image_bytes(self, image_bytes):
        # One model call per image (own size), then pad to the batch's largest size.
        outputs = tf.map_fn(
            self._one_encoded,
            image_bytes,
            fn_output_signature={
                "class_map": tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                "probabilities": tf.RaggedTensorSpec(
                    [None, None, self.num_classes], tf.float32, ragged_rank=1
                ),
                "image_size": tf.TensorSpec([2], tf.int32),
            },
        )
        return {
            "class_map": outputs["class_map"].to_tensor(default_value=-1),
            "probabilities": outputs["probabilities"].to_tensor(default_value=0.0),
            "image_size": outputs["image_size"],
        }

    def raw(self, images):
        key = "probabilities" if self.activation else "logits"
        return {key: tf.cast(self.model(images, training=False), tf.float32)}


def _archive(model, preprocessing):
    serving = _Serving(model, preprocessing)
    archive = keras.export.ExportArchive()
    archive.track(model)
    h, w = serving.size  # None (dynamic) unless the model was built for a fixed size
    images = tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")
    encoded = tf.TensorSpec([None], tf.string, name="image_bytes")
    floats = tf.TensorSpec([None, h, w, 3], tf.float32, name="images")
    archive.add_endpoint("serving_default", serving.images, input_signature=[images])
    archive.add_endpoint("serving_bytes", serving.image_bytes, input_signature=[encoded])
    archive.add_endpoint("serve", serving.raw, input_signature=[floats])
    return archive


# ---------------------------------------------------------------- files


def _dir_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


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


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's live process
        return True
    return True


def _remove_stale_temporaries(export_dir):
    """Deletes the hidden siblings `.<name>.partial-<pid>-*` / `.<name>.old-<pid>-*` of writers
    that were killed (their process is gone). A killed fallback swap's old export
    (`.<name>.old-<pid>-*/old`) is moved back when `export_dir` is missing."""
    for kind in ("partial", "old"):
        prefix = f".{export_dir.name}.{kind}-"
        for path in export_dir.parent.glob(f"{glob.escape(prefix)}*-*"):
            pid = path.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            old = path / "old"
            if kind == "old" and old.is_dir() and not os.path.lexists(export_dir):
                os.rename(old, export_dir)
            _remove(path)


def signature_summary(loaded):
    """`{signature: {"inputs": {name: [dtype, shape]}, "outputs": {...}}}` of a loaded SavedModel."""

    def spec(s):
        return [s.dtype.name, [None if d is None else int(d) for d in s.shape.as_list()]]

    summary = {}
    for name, fn in loaded.signatures.items():
        _, inputs = fn.structured_input_signature
        summary[name] = {
            "inputs": {k: spec(v) for k, v in sorted(inputs.items())},
            "outputs": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())},
        }
    return summary


def to_saved_model(
    model,
    export_dir,
    verify=True,
    sample_images=None,
    report_path=None,
    labels=None,
    preprocessing=None,
    overwrite=False,
    tolerance=DEFAULT_TOLERANCE,
    optimize=False,
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
        model: a keras_deeplab model (functional or `MultiScaleInputs`).
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
        tolerance: max abs difference allowed for logits and probabilities.
        optimize: serve `keras_deeplab.optimize.optimize_for_inference(model)` instead of
            `model`: BatchNorm folded into the convolutions and large-rate dilated depthwise
            convs through space-to-batch (inference-only, faster on CPU, see the README's
            Benchmarks; equal up to float rounding, about 1e-5 on probabilities). The files
            are still verified against `model` itself.

    Returns:
        The report dict (see `verify_saved_model`; without verification: path, size,
        signatures and labels only).

    Example:
        `to_saved_model(model, "exported/deeplab", report_path="exported/deeplab.report.json")`
    """
    export_dir = Path(export_dir).expanduser().absolute()
    preprocessing_mode = serving_preprocessing(model, preprocessing)
    labels = _resolve_labels(labels, num_classes_of(model))
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
            if optimize:
                from keras_deeplab.optimize import optimize_for_inference

                served = optimize_for_inference(model)
            _archive(served, preprocessing_mode).write_out(str(tmp), verbose=False)
            (tmp / LABELS_FILE).write_text("\n".join(labels) + "\n")
        except (OSError, tf.errors.OpError) as error:
            if not is_disk_full(error):
                raise
            kept = "the existing export is unchanged" if export_dir.exists() else "nothing was left"
            raise DiskFullError(disk_full_message(export_dir, kept)) from None
        export_seconds = time.perf_counter() - start
        if verify:
            try:
                report = verify_saved_model(
                    model, tmp, sample_images, preprocessing=preprocessing, tolerance=tolerance
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
                "size_bytes": _dir_size(tmp),
                "signatures": signature_summary(loaded),
            }
        report.update(
            path=str(export_dir),
            labels_path=str(export_dir / LABELS_FILE),
            num_classes=len(labels),
            export_seconds=round(export_seconds, 3),
            optimized=bool(optimize),
            published=True,
        )
        _publish(tmp, export_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if report_path is not None:
        write_report(report_path, report)
    return report


# ---------------------------------------------------------------- verification


def sample_images(sizes=((65, 97), (65, 97), (96, 128))):
    """Deterministic synthetic RGB uint8 images (smooth patterns + noise), one per size."""
    images = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w].astype("float32")
        smooth = np.stack(
            [255 * xx / w, 255 * yy / h, 127.5 + 127.5 * np.sin((xx + 2 * yy + 17 * i) / 9)], -1
        )
        noise = np.random.default_rng(i).normal(0, 24, (h, w, 3))
        images.append(np.clip(smooth + noise, 0, 255).astype("uint8"))
    return images


def _as_image_list(images, size):
    if images is None:
        fixed = None not in size
        return sample_images([size, size] if fixed else ((65, 97), (65, 97), (96, 128)))
    if isinstance(images, np.ndarray | tf.Tensor) and len(images.shape) in (3, 4):
        images = np.asarray(images)
        images = list(images) if images.ndim == 4 else [images]
    result = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Sample images must be RGB [H, W, 3]; got shape {image.shape}.")
        if image.dtype != np.uint8:
            image = np.clip(np.round(image), 0, 255).astype("uint8")
        result.append(image)
    if not result:
        raise ValueError("verify_saved_model needs at least one sample image.")
    if None not in size and any(image.shape[:2] != size for image in result):
        raise ValueError(
            f"The model takes {size[0]}x{size[1]} images only; got sample images of sizes "
            f"{sorted({image.shape[:2] for image in result})}."
        )
    return result


def _latency_ms(fn, repeats=3):
    fn()  # warm-up (first calls trace / allocate)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


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
    model, export_dir, images=None, preprocessing=None, tolerance=DEFAULT_TOLERANCE
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
    images = _as_image_list(images, input_size_of(model))
    mode = serving_preprocessing(model, preprocessing)
    activation = _output_activation(model)
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

    def keras_raw(batch):
        x = tf.constant(batch, tf.float32)
        x = x if normalise is None else normalise(x)
        return np.asarray(tf.cast(model(x, training=False), tf.float32))

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
        references[shape] = (raw, to_probabilities(raw))
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
        _compare(
            "serving_bytes",
            reference,
            out["probabilities"].numpy()[i, :h, :w],
            out["class_map"].numpy()[i, :h, :w],
            tolerance,
            stats,
        )

    first = images[0][np.newaxis]
    first_float = first.astype("float32")
    first_model_input = first_float if normalise is None else np.asarray(normalise(first_float))
    latency = {
        "keras": _latency_ms(lambda: model(first_model_input, training=False)),
        "serving_default": _latency_ms(
            lambda: signatures["serving_default"](images=tf.constant(first))
        ),
        "serving_bytes": _latency_ms(
            lambda: signatures["serving_bytes"](image_bytes=tf.constant(encoded[:1]))
        ),
        "serve": _latency_ms(lambda: signatures["serve"](images=tf.constant(first_model_input))),
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
        "size_bytes": _dir_size(export_dir),
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
