"""Inference on images of any size: padding, multi-scale + flip, sliding window, dense CRF.

Follows the official evaluation / export of `tensorflow/models:research/deeplab`
(`model.py:predict_labels` and `predict_labels_multi_scale`, `eval.py`, `export_model.py`):

* each forward pass sees an input of size `k * output_stride + 1` (the official eval crop
  rule): the image is padded bottom/right with the mean pixel (127.5) and the logits are
  cropped back, so the model's align-corners resizes line up with the pixels;
* multi-scale: per scale the image is resized to `int((size - 1) * scale + 1)` with
  align-corners bilinear interpolation, run, and the logits resized back (align corners) to
  the image size; `fusion="mean"` averages the softmax probabilities over scales and flips
  (v3 / v3+, default scales 0.5..1.75 in `OFFICIAL_EVAL_SCALES`), `fusion="max"` takes the
  per-pixel max of the logits (the test-time form of v2's MSC, Chen et al. 2017 §3.3);
* flip: the horizontally flipped image is run too and its output flipped back (before
  padding, so the result is exactly flip-equivariant);
* sliding window (for e.g. Cityscapes 1024x2048): windows of a fixed size, evenly spaced
  from border to border with at least the requested overlap; probabilities are averaged
  where windows overlap;
* dense CRF (DeepLab v1/v2) on the fused probabilities at full resolution, see
  `keras_deeplab.crf`;
* precision and graph rewrites: by default the model runs through
  `keras_deeplab.optimize.optimize_for_inference` (BatchNorm folded, dilated depthwise via
  space-to-batch: the same labels, faster); `precision="bfloat16"` / `"float16"` / `"auto"`
  (`keras_deeplab.precision`) also computes under a mixed dtype policy, with the logits cast
  back to float32 so the softmax, fusion and argmax stay float32.
"""

import math

import numpy as np
import tensorflow as tf

from keras_deeplab import _compat
from keras_deeplab.data.augment import padded_size
from keras_deeplab.layers import scale_dimension
from keras_deeplab.optimize import optimize_for_inference
from keras_deeplab.precision import inference_policy, resolve_precision

OFFICIAL_EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
FUSIONS = ("mean", "max")
_LOG_FLOOR = 1e-30


def _resize_align_corners(array, size):
    """Align-corners bilinear resize of [H, W, C] float32 (the models' own convention)."""
    if tuple(array.shape[:2]) == tuple(size):
        return array
    out = tf.raw_ops.ResizeBilinear(
        images=array[None], size=list(size), align_corners=True, half_pixel_centers=False
    )
    return out.numpy()[0]


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


OUTPUT_KINDS = ("logits", "softmax")


def _window_starts(length, window, overlap):
    """Evenly spaced window starts covering `length`, neighbours sharing >= `overlap`."""
    if length <= window:
        return [0]
    stride = max(1, int(math.ceil(window * (1.0 - overlap) - 1e-6)))
    count = int(math.ceil((length - window) / stride)) + 1
    return [i * (length - window) // (count - 1) for i in range(count)]


class Segmenter:
    """Runs a DeepLab model on images of any size and returns label maps or probabilities.

    Args:
        model: a model mapping RGB batches [B, H, W, 3] to logits at the input size (every
            keras_deeplab model: builders, `MultiScaleInputs`, loaded `.keras` files). Models
            built with `activation="softmax"` work too (their log-probabilities are used).
        scales: input scales, e.g. `OFFICIAL_EVAL_SCALES` (0.5..1.75). v2 MSC models fuse
            their own scales inside; keep `(1.0,)` for them.
        flip: also run the left-right flipped image.
        fusion: `"mean"` (average softmax probabilities, v3/v3+) or `"max"` (max of logits,
            v2 MSC-style) over scales and flips.
        crf: None, a `keras_deeplab.crf.CRF_PRESETS` name (`"deeplabv1_largefov"`,
            `"deeplabv2_resnet101"`, `"densecrf_default"`) or a dict of CRF parameters;
            needs `pydensecrf` (the `crf` extra).
        output_stride: pad every input to `k * output_stride + 1`. Default: the model's
            `output_stride` (every keras_deeplab model has one); other models need it
            (e.g. 8 or 16), or 1 to disable padding.
        pad_value: padding value in the model's input units (127.5 = mean pixel for models
            taking RGB 0..255; use 0.0 for `include_preprocessing=False` models).
        sliding_window: None or `(height, width)` of the windows (e.g. `(769, 769)` or
            `(1025, 1025)` for Cityscapes); inputs larger than that are tiled.
        overlap: fraction of a window shared with its neighbour (default 1/3).
        batch_size: forward passes per model call (same-size inputs are batched together,
            across images, scales and flips).
        crf_processes: worker processes for the CRF (`keras_deeplab.crf.batch_crf`).
        outputs: what the model returns, `"logits"` or `"softmax"` (probabilities). Default:
            the model's `activation` (keras_deeplab models); other models are taken to
            return logits unless told `outputs="softmax"`.
        precision: `"float32"` (default), `"bfloat16"`, `"float16"` or `"auto"` (bfloat16
            on CPUs with AMX and recent GPUs, else float32; see `keras_deeplab.precision`).
            Reduced precision needs a functional Keras model (every keras_deeplab model).
        optimize: run the model through `optimize_for_inference` (BN folding, space-to-batch
            for large dilation rates; labels equal up to float rounding). The rewrite copies
            the weights when the Segmenter first runs (or `inference_model` is first read):
            build a new Segmenter after changing them. False runs `model` as given (float32
            only). Models that are not functional Keras models run as given.

    Example:
        >>> seg = Segmenter(model, scales=OFFICIAL_EVAL_SCALES, flip=True)
        >>> labels = seg.predict([image_a, image_b])  # list of int32 [H_i, W_i]
    """

    def __init__(
        self,
        model,
        scales=(1.0,),
        flip=False,
        fusion="mean",
        crf=None,
        output_stride=None,
        pad_value=127.5,
        sliding_window=None,
        overlap=1.0 / 3.0,
        batch_size=1,
        crf_processes=1,
        outputs=None,
        precision="float32",
        optimize=True,
    ):
        self.model = model
        self.precision = resolve_precision(precision)
        self.optimize = bool(optimize)
        rewritable = hasattr(model, "with_inference_options") or _compat.is_functional(model)
        self._rewrite = self.optimize and rewritable
        self._policy = self._check_inference(model, rewritable)  # bad settings fail here
        self._inference = None if self._rewrite else model  # rewritten at first use
        self.scales = tuple(float(s) for s in np.atleast_1d(scales))
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers; got {scales!r}.")
        self.flip = bool(flip)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}.")
        self.fusion = fusion
        self.crf = None
        if crf is not None:
            from keras_deeplab import crf as crf_module

            self.crf = crf_module.resolve_params(crf)
        if output_stride is None:
            output_stride = getattr(model, "output_stride", None)  # SegmentationModel property
            if output_stride is None:
                raise ValueError(
                    f"Model {model.name!r} is not a keras_deeplab model and has no "
                    "output_stride; pass output_stride=... (e.g. 8 or 16), or 1 to run "
                    "without padding."
                )
        if isinstance(output_stride, bool) or int(output_stride) != output_stride:
            raise ValueError(f"output_stride must be a positive integer; got {output_stride!r}.")
        if output_stride < 1:
            raise ValueError(f"output_stride must be a positive integer; got {output_stride!r}.")
        self.output_stride = int(output_stride)
        self.pad_value = float(pad_value)
        if sliding_window is not None:
            window = tuple(int(v) for v in np.atleast_1d(sliding_window))
            if len(window) == 1:
                window = window * 2
            if len(window) != 2 or min(window) < 1:
                raise ValueError(
                    f"sliding_window must be None or (height, width); got {sliding_window!r}."
                )
            sliding_window = window
        self.sliding_window = sliding_window
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1); got {overlap!r}.")
        self.overlap = float(overlap)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}.")
        self.batch_size = int(batch_size)
        self.crf_processes = crf_processes
        if outputs is None:  # SegmentationModel property; other models: logits
            activation = getattr(model, "activation", None)
            outputs = "logits" if activation is None else activation
        if outputs not in OUTPUT_KINDS:
            raise ValueError(
                f"Segmenter needs a model returning logits or softmax probabilities; model "
                f"{model.name!r} returns {outputs!r} (outputs= takes {OUTPUT_KINDS})."
            )
        self._probabilities_out = outputs == "softmax"
        self._forward = tf.function(self._call_model, reduce_retracing=True, autograph=False)

    # --- model calls -------------------------------------------------------------------

    def _check_inference(self, model, rewritable):
        """The dtype policy `inference_model` will use; raises for settings it cannot serve."""
        policy = inference_policy(model, self.precision)
        if policy is not None and not self._rewrite:
            reason = "optimize=False" if rewritable else f"{type(model).__name__} is not functional"
            raise ValueError(
                f"precision={self.precision!r} rebuilds the model under the dtype policy "
                f"{policy!r}, which needs optimize=True and a functional Keras model "
                f"({reason}); use precision='float32' with a float32 model."
            )
        if self._rewrite and not model.built:
            raise ValueError(
                f"model {model.name!r} is not built; call it once or pass a built model."
            )
        return policy

    @property
    def inference_model(self):
        """The model that runs: `model` rewritten for inference in `self.precision` (or
        `model` itself). Built on first use, so constructing a Segmenter is cheap."""
        if self._inference is None:
            self._inference = optimize_for_inference(self.model, dtype_policy=self._policy)
        return self._inference

    def _call_model(self, x):
        y = self.inference_model(x, training=False)
        if isinstance(y, dict):
            raise ValueError("The model returns a dict; Segmenter needs one logits tensor.")
        return tf.cast(y, tf.float32)

    def _run_batch(self, batch):
        """Runs one batch [B, h, w, 3] (padded) and returns float32 logits [B, h, w, C]."""
        self.inference_model  # noqa: B018 -- built eagerly here, never inside the traced call
        out = self._forward(tf.constant(batch, tf.float32)).numpy()
        if self._probabilities_out:
            out = np.log(np.maximum(out, _LOG_FLOOR))
        return out

    # --- planning ----------------------------------------------------------------------

    def _input_plan(self, height, width):
        """`(padded height, padded width, (top, left) mirror padding or None)` of a tile."""
        tile = getattr(self.model, "overlap_tile_padding", None)
        rows = tile(height) if tile is not None else None
        if rows is None:
            return (
                padded_size(height, self.output_stride),
                padded_size(width, self.output_stride),
                None,
            )
        cols = tile(width)
        return height + sum(rows), width + sum(cols), (rows, cols)

    def _pad(self, array, height, width, mirror=None):
        if mirror is not None:  # overlap-tile: the image mirrored around its borders
            return np.pad(array, (*mirror, (0, 0)), mode="reflect")
        pad_h, pad_w = height - array.shape[0], width - array.shape[1]
        if pad_h == 0 and pad_w == 0:
            return array
        return np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=self.pad_value)

    def _tiles(self, view):
        """`(row, col, tile)` crops of a view; one crop when no window applies."""
        height, width = view.shape[:2]
        if self.sliding_window is None:
            return [(0, 0, view)]
        win_h, win_w = self.sliding_window
        if height <= win_h and width <= win_w:
            return [(0, 0, view)]
        return [
            (top, left, view[top : top + win_h, left : left + win_w])
            for top in _window_starts(height, win_h, self.overlap)
            for left in _window_starts(width, win_w, self.overlap)
        ]

    def _views(self, image):
        """`(flipped, view)` inputs of one image: every scale, then its flip."""
        height, width = image.shape[:2]
        for scale in self.scales:
            if scale == 1.0:
                view = image
            else:
                size = (scale_dimension(height, scale), scale_dimension(width, scale))
                view = _resize_align_corners(image, size)
            yield False, view
            if self.flip:
                yield True, np.ascontiguousarray(view[:, ::-1])

    # --- prediction --------------------------------------------------------------------

    def _predict_chunk(self, images):
        """Fused probabilities (before CRF) for a few images."""
        fused = [None] * len(images)
        pending = {}  # padded input shape -> [(view, top, left, tile_h, tile_w, padded tile)]

        def finish_view(view):
            logits = view["acc"]
            if view["windowed"]:  # averaged window probabilities -> log-probabilities
                logits = np.log(np.maximum(logits / view["count"][..., None], _LOG_FLOOR))
            if view["flipped"]:
                logits = logits[:, ::-1]
            logits = _resize_align_corners(np.ascontiguousarray(logits), view["image_size"])
            i = view["image"]
            if self.fusion == "mean":
                value = _softmax(logits)
                fused[i] = value if fused[i] is None else fused[i] + value
            else:
                fused[i] = logits if fused[i] is None else np.maximum(fused[i], logits)

        def flush(key):
            items = pending.pop(key)
            outputs = self._run_batch(np.stack([item[-1] for item in items]))
            for (view, top, left, tile_h, tile_w, _), out in zip(items, outputs, strict=True):
                logits = out[:tile_h, :tile_w]
                if not view["windowed"]:
                    view["acc"] = logits
                else:
                    if view["acc"] is None:
                        view["acc"] = np.zeros((*view["size"], logits.shape[-1]), np.float32)
                    view["acc"][top : top + tile_h, left : left + tile_w] += _softmax(logits)
                    view["count"][top : top + tile_h, left : left + tile_w] += 1.0
                view["remaining"] -= 1
                if view["remaining"] == 0:
                    finish_view(view)

        for index, image in enumerate(images):
            for flipped, array in self._views(image):
                tiles = self._tiles(array)
                view = {
                    "image": index,
                    "image_size": image.shape[:2],
                    "size": array.shape[:2],
                    "flipped": flipped,
                    "windowed": len(tiles) > 1,
                    "acc": None,
                    "count": np.zeros(array.shape[:2], np.float32) if len(tiles) > 1 else None,
                    "remaining": len(tiles),
                }
                for top, left, tile in tiles:
                    tile_h, tile_w = tile.shape[:2]
                    *key, mirror = self._input_plan(tile_h, tile_w)
                    key = tuple(key)
                    pending.setdefault(key, []).append(
                        (view, top, left, tile_h, tile_w, self._pad(tile, *key, mirror))
                    )
                    if len(pending[key]) >= self.batch_size:
                        flush(key)
                if view["windowed"]:  # bound memory: finish a tiled view before the next
                    for key in list(pending):
                        flush(key)
        for key in list(pending):
            flush(key)

        num_views = len(self.scales) * (2 if self.flip else 1)
        if self.fusion == "mean":
            return [probs / num_views for probs in fused]
        return [_softmax(logits) for logits in fused]

    def _prepare(self, images):
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            if images.ndim == 2 or images.shape[-1] in (1, 3, 4):
                images = [images]
        elif isinstance(images, np.ndarray) or tf.is_tensor(images):
            images = list(np.asarray(images))
        prepared = []
        for i, image in enumerate(images):
            image = self._match_channels(np.asarray(image), i)
            if min(image.shape[:2]) < 1:
                raise ValueError(f"image {i} is empty: shape {image.shape}.")
            if self.pad_value > 1.0 and image.dtype.kind == "f" and 0.0 < image.max() <= 1.0:
                raise ValueError(
                    f"image {i} has values in [0, 1], but the model takes RGB in 0..255 (it "
                    "would predict nearly all background): multiply the image by 255 (models "
                    "built with include_preprocessing=False take pad_value=0.0 instead)."
                )
            prepared.append(image)
        return prepared

    def _match_channels(self, image, i):
        """`image` as the model's channels: RGB models take grayscale repeated to RGB,
        1-channel models take RGB as its luma (ITU-R 601, as `tf.image.rgb_to_grayscale`)."""
        channels = self.model.input_shape[-1] or 3
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            return np.repeat(image[..., None], channels, axis=-1)
        if image.ndim == 3 and channels == 1 and image.shape[-1] == 3:
            luma = image.astype(np.float32) @ np.float32([0.2989, 0.587, 0.114])
            return luma[..., None]
        if image.ndim != 3 or image.shape[-1] != channels:
            kind = "RGB images [H, W, 3]" if channels == 3 else f"{channels}-channel images"
            raise ValueError(
                f"image {i} has shape {image.shape}; the model takes {kind} (grayscale [H, W] "
                "is repeated to the model's channels; drop the alpha channel of RGBA)."
            )
        return image

    def predict_proba(self, images):
        """Class probabilities per image.

        Args:
            images: a batch [B, H, W, 3], a list of [H_i, W_i, 3] arrays (any sizes), or one
                image [H, W, 3]; uint8 or float RGB in 0..255.

        Returns:
            list of float32 [H_i, W_i, C]: fused softmax probabilities, or the CRF marginals
            when `crf` is set.
        """
        images = self._prepare(images)
        floats = [image.astype(np.float32) for image in images]
        probs = []
        for start in range(0, len(floats), self.batch_size):
            probs.extend(self._predict_chunk(floats[start : start + self.batch_size]))
        probs = [p.astype(np.float32) for p in probs]
        if self.crf is None:
            return probs
        from keras_deeplab.crf import batch_crf

        uint8 = [
            image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)
            for image in images
        ]
        return batch_crf(uint8, probs, self.crf, processes=self.crf_processes)

    def predict(self, images):
        """Label maps: list of int32 [H_i, W_i] (argmax of `predict_proba`)."""
        return [p.argmax(-1).astype(np.int32) for p in self.predict_proba(images)]


def verify_precision(model, precision, images, labels=None, ignore_label=255, reference=None):
    """Argmax agreement and mIoU of `model` run in `precision` against float32.

    Both sides go through `Segmenter` (its default inference path: BN folded, float32
    softmax/argmax); the reduced side computes under `keras_deeplab.precision.dtype_policy`.

    Args:
        model: a keras_deeplab model.
        precision: "bfloat16", "float16" or "auto" (a float32 resolution compares float32
            with itself: agreement 1.0).
        images: a list of [H, W, 3] uint8 images.
        labels: optional list of [H, W] label maps (`ignore_label` skipped) for the mIoUs.
        reference: optional list of float32 label maps already computed for `images`.

    Returns:
        `{"precision", "images", "pixels", "agreement", "miou_float32", "miou",
        "miou_difference"}` (the mIoU entries None without labels).

    Example:
        >>> verify_precision(model, "bfloat16", images, labels)["agreement"]
        0.9969
    """
    from keras_deeplab.evaluation.metrics import ConfusionMatrix

    resolved = resolve_precision(precision)
    if labels is not None and len(labels) != len(images):
        raise ValueError(
            f"verify_precision got {len(images)} images but {len(labels)} labels; pass one "
            f"label map per image (or labels=None for the agreement only)."
        )
    if reference is None:
        reference = Segmenter(model, precision="float32").predict(images)
    reduced = Segmenter(model, precision=resolved).predict(images)
    same = sum(int(np.sum(a == b)) for a, b in zip(reference, reduced, strict=True))
    pixels = sum(int(a.size) for a in reference)
    result = {
        "precision": resolved,
        "images": len(images),
        "pixels": pixels,
        "agreement": same / max(pixels, 1),
        "miou_float32": None,
        "miou": None,
        "miou_difference": None,
    }
    if labels is not None:
        num_classes = int(model.output_shape[-1])
        scores = []
        for predictions in (reference, reduced):
            matrix = ConfusionMatrix(num_classes, ignore_label=ignore_label)
            for truth, labels_map in zip(labels, predictions, strict=True):
                matrix.update(np.asarray(truth), labels_map)
            scores.append(float(matrix.result()["miou"]))
        result["miou_float32"], result["miou"] = scores
        result["miou_difference"] = scores[1] - scores[0]
    return result
