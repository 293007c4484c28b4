"""Every architecture family trained with one recipe on CamVid, side by side (issue 19).

Trains each row of `ROWS` on `camvid_full` train (367 images) with ONE recipe (`recipe()`:
the same crop, batch, steps, optimiser, schedule, augmentation and BatchNorm mode for all;
`--class-weights median_frequency` applies SegNet's weights to all rows or none), then scores
each on the val split (101 images) at its native 360x480 through the `Segmenter` (padding to
k * output_stride + 1), and measures parameters, multiply-adds, Keras and TFLite fp32 latency
at 360x480, training images/s and wall time.

Rows:

* backbone + head families (DeepLabV3, DeepLabV3+, the FCN head, PSPNet's PPM, UperNet,
  RefineNet, ParseNet, the context module) on ONE backbone, MobileNetV2 depth 0.5, each twice:
  initialised from Google's DeepLab weights (`deeplabv3_257_mv_gpu.tflite`, the only pretrained
  weights offline: `load_tflite`, the backbone's weights copied by layer name through
  `backbone_weights=`) and from scratch. Families the registry does not yet allow on
  `mobilenetv2_dm05` are reported as skipped with the registry's error.
* `deeplabv3_voc`: the whole official model (backbone + image-pooling/1x1 head) as
  `benchmarks/camvid_finetune.py` starts it; only the 11-class logits are new.
* whole-graph architectures from scratch: SegNet-Basic, U-Net (same padding; base 32 and
  BatchNorm to fit the budget). VGG-16 trunks (FCN-8s, DeepLab-LargeFOV, Dilation8: 20-134M
  parameters, 10-30x the multiply-adds) are opt-in through `--models` only.

BatchNorm: one mode for every row (`fine_tune_batch_norm=True`, momentum 0.9): a from-scratch
network needs batch statistics. Google's file has its BatchNorms folded into the convolutions
(unit variance, zero mean); before copying, each folded BatchNorm is re-parameterised with the
statistics of its input over CamVid training images (moving mean/variance = those, gamma =
sqrt(var + eps), beta += mean): the network computes exactly the same function in inference
mode and nearly the same in training mode, so batch statistics do not wipe out the file's
per-channel scales.

Default (full) run: crop 225x225, batch 8, 400 steps (8.7 epochs), momentum SGD 0.9, LR 0.007
poly 0.9 after a 40-step linear warm-up from LR/10, weight decay 4e-5, scale 0.75-1.5 + flip,
`train.precision=auto` (on an AMX CPU or an AMD CPU with AVX512-BF16: float32 for the light
heads, whose depthwise convolutions hold >= 3% of the multiply-adds, bfloat16 mixed precision
for the others; each measured the faster one, `keras_deeplab.precision.training_fallback`;
scoring always in float32), full val split, RefineNet at width 128 (released 256:
`ZOO_REFINENET_WIDTH`); then every row's latency in one pass. Its measured time on the
2-core CI machine type, which depends on the host's state, is in docs/camvid_zoo.md, "Budget". `--quick`: 40 steps at crop 193 batch 4, 24 val images, the
nine Google-initialised rows only (heads on one trunk; the whole-graph networks trained from
scratch cost half the check's time on an AVX2 host), UperNet at FPN/PPM width 128 and RefineNet
at width 64 (`QUICK_UPERNET`, `QUICK_REFINENET`; 3-11x faster on an AVX2 host).

Run: `nice -n 10 python -m benchmarks.camvid_zoo [--quick] [--models a,b] [--steps N]
[--out DIR]`. Trained runs go to `--out/<row>/` (model.json + model.weights.h5: `keras-deeplab
eval --run DIR/<row>` loads them); results to `benchmarks/results/camvid_zoo.{json,md,png}` and
`camvid_zoo_panels.png` (`camvid_zoo_quick.*` with `--quick`). Not a test.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS_DIR
from keras_deeplab._cpu_steal import cpu_times, steal_share
from keras_deeplab._json import jsonable
from keras_deeplab.training.distribute import usable_cores

GOOGLE_TFLITE = ("deeplabv3_tflite", "deeplabv3_257_mv_gpu.tflite")
DATA_NAME = "camvid_full"
EVAL_SIZE = (360, 480)
PANEL_IMAGES = (0, 45, 90)  # val indices of the three panel images (full val split)
BACKBONE = "mobilenetv2_dm05"


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained model of the table."""

    key: str
    family: str
    model: str
    options: dict
    init: str  # "google_backbone" | "google_full" | "scratch"
    default: bool = True
    quick: bool = False
    note: str = ""
    quick_options: dict = dataclasses.field(default_factory=dict)  # narrower under --quick


def _backbone_rows(family, model, note="", quick_options=None, **options):
    options = {"backbone": BACKBONE, **options}
    quick_options = quick_options or {}
    common = {"note": note, "quick_options": quick_options}
    return [
        Row(family, family, model, options, "google_backbone", quick=True, **common),
        Row(f"{family}_scratch", family, model, options, "scratch", **common),
    ]


# --quick on a 2-core AVX2 host (AMD EPYC, float32) trains the full-width heads at 1.6 img/s
# (UperNet, FPN 256) and 0.5 img/s (RefineNet, width 256; 64M parameters on a 0.7M trunk),
# 11 img/s for DeepLabV3: narrower heads (5.2 and 5.4 img/s) take the largest cost out of the
# check (docs/camvid_zoo.md, under the settings). The default run keeps UperNet's named widths
# and runs RefineNet at width 128 (below).
QUICK_UPERNET = {"fpn_dim": 128, "ppm_channels": 128}
QUICK_REFINENET = {"width": 64}
# The full run's RefineNet: the released width (256; 512 on the deepest path) makes a 64M-parameter,
# 137-GMAC head on this 0.7M trunk (taps of 72-288 channels): 2.6 img/s in bfloat16 on a Zen 5
# EPYC (family 26), about 40 minutes for its two rows at 400 steps. Width 128 (16.9M) trains at
# 8.4 img/s there (the whole default run took 83.6 minutes, docs/camvid_zoo.md).
ZOO_REFINENET_WIDTH = 128


ROWS = (
    *_backbone_rows("deeplabv3", "deeplabv3_mobilenetv2_dm05_os8", "ASPP-less v3 head, OS 8"),
    Row(
        "deeplabv3_voc",
        "deeplabv3",
        "deeplabv3_mobilenetv2_dm05_os8",
        {},
        "google_full",
        quick=True,
        note="the whole VOC model (camvid_finetune's start); new 11-class logits only",
    ),
    *_backbone_rows("deeplabv3plus", "deeplabv3plus_mobilenetv2", "decoder on stride 4, OS 16"),
    *_backbone_rows(
        "fcn_head", "fcn_resnet50", "torchvision FCN head, OS 8", aux_head=False, output_stride=8
    ),
    *_backbone_rows("pspnet", "pspnet_mobilenetv2", "PPM head, OS 8"),
    *_backbone_rows(
        "upernet",
        "upernet_lite_resnet50",
        "PPM + FPN (256), OS 32",
        quick_options=QUICK_UPERNET,
        aux_head=False,
    ),
    *_backbone_rows(
        "refinenet",
        "refinenet_resnet50",
        "RefineNet-4 cascade at width 128 (released 256), OS 32",
        quick_options=QUICK_REFINENET,
        width=ZOO_REFINENET_WIDTH,
    ),
    *_backbone_rows("parsenet", "parsenet_mobilenetv2", "global context, OS 16"),
    *_backbone_rows("context", "context_mobilenetv2", "basic context module, OS 8"),
    # Not in --quick: on the AVX2 host SegNet-Basic trains at 0.6 img/s and U-Net at 1.2 (crop
    # 193, float32), 8 of the 17.6 minutes of the quick run that held them (2026-12-01).
    Row("segnet_basic", "segnet_basic", "segnet_basic", {}, "scratch"),
    Row(
        "unet_same",
        "unet",
        "unet_same",
        {"base_filters": 32, "batch_norm": True},
        "scratch",
        note="same padding, base 32 (paper 64), BatchNorm: CPU budget",
    ),
    Row("fcn8s", "fcn", "fcn8s", {}, "scratch", default=False, note="VGG-16 trunk, opt-in"),
    Row(
        "deeplabv1_largefov",
        "deeplabv1",
        "deeplabv1_vgg16_largefov",
        {},
        "scratch",
        default=False,
        note="VGG-16 trunk, opt-in",
    ),
    Row(
        "dilation8_camvid",
        "dilation",
        "dilation8_camvid",
        {},
        "scratch",
        default=False,
        note="VGG-16 front end + context module, opt-in",
    ),
)
ROW_BY_KEY = {row.key: row for row in ROWS}

FULL = {
    "steps": 400,
    "batch_size": 8,
    "crop_size": 225,
    "eval_limit": None,
    "latency_runs": 10,
}
QUICK = {
    "steps": 40,
    "batch_size": 4,
    "crop_size": 193,
    "eval_limit": 24,
    "latency_runs": 3,
}


def recipe(settings, data_root, run_dir, row, init_files):
    """The one training config every row gets (only `model` differs)."""
    model = {"name": row.model, "num_classes": 11, "options": dict(row.options)}
    if "output_stride" in model["options"]:
        model["output_stride"] = model["options"].pop("output_stride")
    if row.init == "google_backbone":
        model["backbone_weights"] = str(init_files["backbone"])
    elif row.init == "google_full":
        model["weights"] = str(init_files["full"])
    return {
        "model": model,
        "data": {
            "source": "directory",
            "root": str(data_root),
            "split": "train",
            "eval_split": None,
            "crop_size": settings["crop_size"],
            "min_scale": settings["min_scale"],
            "max_scale": settings["max_scale"],
            "scale_step": 0.25,
            "flip": True,
            "options": {"validate": False},  # scanned once by main(), not once per row
        },
        "loss": {"class_weights": settings["class_weights"]},
        "optimizer": {
            "type": "momentum",
            "learning_rate": settings["learning_rate"],
            "momentum": 0.9,
            "weight_decay": 4e-5,
            "global_clipnorm": settings["global_clipnorm"],
        },
        "schedule": {
            "policy": "poly",
            "power": 0.9,
            "warmup_steps": settings["warmup_steps"],
            "warmup_learning_rate": settings["learning_rate"] / 10,
            "warmup": "linear",
        },
        "train": {
            "steps": settings["steps"],
            "batch_size": settings["batch_size"],
            "steps_per_epoch": settings["steps_per_epoch"],
            "seed": settings["seed"],
            "fine_tune_batch_norm": settings["batch_norm"] == "train",
            "batch_norm_momentum": 0.9 if settings["batch_norm"] == "train" else None,
            "precision": settings["precision"],
            "strategy": "default",
            "verbose": 0,
        },
        "checkpoint": {
            "dir": str(run_dir),
            "every_steps": 250,
            "max_to_keep": 1,
            "tensorboard": False,
        },
    }


# --- arguments and data ------------------------------------------------------------------


def parse_rows(text, quick):
    """The rows of `--models` (comma-separated keys; "all" = every row, opt-in ones too),
    with their `quick_options` applied under `--quick`."""
    if text is None:
        rows = [r for r in ROWS if (r.quick if quick else r.default)]
    elif text.strip() == "all":
        rows = list(ROWS)
    else:
        rows = _named_rows(text)
    return [_quick(row) for row in rows] if quick else rows


def _named_rows(text):
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROW_BY_KEY]
    if unknown or not keys:
        raise SystemExit(
            f"--models: unknown row(s) {', '.join(unknown) or '(none given)'}; valid rows: "
            f"{', '.join(ROW_BY_KEY)} (or 'all'). Fix: pass a comma-separated subset, e.g. "
            "--models deeplabv3,segnet_basic."
        )
    return [ROW_BY_KEY[k] for k in dict.fromkeys(keys)]


def _quick(row):
    if not row.quick_options:
        return row
    note = ", ".join(f"{k}={v}" for k, v in row.quick_options.items())
    options = {**row.options, **row.quick_options}
    return dataclasses.replace(row, options=options, note=f"{row.note}; quick: {note}")


def data_root(explicit=None):
    """`camvid_full` (train/, trainannot/, val/, valannot/); one clear error when missing."""
    from keras_deeplab._shared_data import DEFAULT_SHARED_DATA, SHARED_DATA_ENV

    if explicit is not None:
        root = Path(explicit)
    else:
        env = os.environ.get(SHARED_DATA_ENV)
        root = (Path(env).expanduser() if env else DEFAULT_SHARED_DATA) / DATA_NAME
    missing = [d for d in ("train", "trainannot", "val", "valannot") if not (root / d).is_dir()]
    if missing:
        raise SystemExit(
            f"CamVid not found: expected {root} with train/, trainannot/, val/, valannot/ "
            f"(missing: {', '.join(missing)}). The data is looked up as "
            f"${SHARED_DATA_ENV}/{DATA_NAME} if that variable is set, else "
            f"{DEFAULT_SHARED_DATA}/{DATA_NAME} (shared/data beside the repository). Fix: set "
            f"{SHARED_DATA_ENV} to the folder holding {DATA_NAME}/, or pass --data DIR."
        )
    return root


def shared_file(*parts):
    """A file of the shared data folder (SystemExit naming it when missing)."""
    from benchmarks._common import shared_data_dir

    return shared_data_dir(*parts)


# --- Google's weights, re-parameterised for batch-statistics training ---------------------


def _folded(bn):
    """True when a BatchNorm holds a folded bias only (gamma 1, mean 0, var + eps = 1)."""
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones(1)
    return (
        np.all(gamma == 1)
        and np.all(np.asarray(bn.moving_mean) == 0)
        and np.allclose(np.asarray(bn.moving_variance) + bn.epsilon, 1.0, atol=1e-6)
    )


def unfold_batch_norm(model, images, batch=4):
    """Gives every folded BatchNorm of `model` its input's statistics over `images`, keeping
    the inference function: moving mean m / variance v, gamma sqrt(v + eps), beta += m.
    Returns the number of layers changed."""
    from keras_deeplab.training.batchnorm import batch_norm_layers

    norms = [bn for bn in batch_norm_layers(model) if _folded(bn)]
    sums = {id(bn): [0.0, 0.0, 0] for bn in norms}

    def recording(bn):
        call = type(bn).call

        def record(inputs, training=None, mask=None):
            x = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
            acc = sums[id(bn)]
            acc[0] = acc[0] + x.sum(0)
            acc[1] = acc[1] + (x * x).sum(0)
            acc[2] += x.shape[0]
            return call(bn, inputs, training=False, mask=mask)

        return record

    for bn in norms:
        bn.call = recording(bn)
    try:
        for start in range(0, len(images), batch):
            model(np.stack(images[start : start + batch]).astype("float32"), training=False)
    finally:
        for bn in norms:
            del bn.call
    for bn in norms:
        total, squares, count = sums[id(bn)]
        mean = total / count
        var = np.maximum(squares / count - mean * mean, 0.0)
        bn.moving_mean.assign(mean.astype("float32"))
        bn.moving_variance.assign(var.astype("float32"))
        if bn.scale:
            bn.gamma.assign(np.sqrt(var + bn.epsilon).astype("float32"))
        bn.beta.assign((np.asarray(bn.beta) + mean).astype("float32"))
    return len(norms)


def prepare_google_weights(out_dir, root, num_images):
    """`{"backbone": file, "full": file, "bn_layers": n, "max_abs_change": x}` from Google's
    file, its BatchNorms re-parameterised on the first `num_images` CamVid train images."""
    from PIL import Image

    from keras_deeplab.weights import load_tflite

    out_dir = Path(out_dir)
    files = {"backbone": out_dir / "google_backbone.weights.h5"}
    files["full"] = out_dir / "google_full.weights.h5"
    info = out_dir / "google_weights.json"
    if info.is_file() and all(f.is_file() for f in files.values()):
        return {**json.loads(info.read_text()), **files}
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_tflite(shared_file(*GOOGLE_TFLITE))
    paths = sorted((root / "train").glob("*.png"))[:num_images]
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths]
    before = np.asarray(model(np.stack(images[:2]), training=False))
    changed = unfold_batch_norm(model, images)
    after = np.asarray(model(np.stack(images[:2]), training=False))
    change = float(np.abs(after - before).max() / max(1.0, np.abs(before).max()))
    if change > 1e-3:
        raise RuntimeError(f"re-parameterising the BatchNorms changed the logits by {change}")
    model.get_backbone().save_weights(str(files["backbone"]))
    model.save_weights(str(files["full"]))
    record = {"bn_layers": changed, "max_rel_change": change, "images": len(images)}
    info.write_text(json.dumps(record))
    return {**record, **files}


# --- measuring one trained model ---------------------------------------------------------


def val_images(root, limit):
    """`[(stem, rgb uint8 [H, W, 3], labels uint8 [H, W])]` of the val split (void -> 255)."""
    from PIL import Image

    pairs = []
    for path in sorted((root / "val").glob("*.png"))[:limit]:
        image = np.asarray(Image.open(path).convert("RGB"))
        labels = np.asarray(Image.open(root / "valannot" / path.name), np.uint8).copy()
        labels[labels == 11] = 255
        pairs.append((path.stem, image, labels))
    if not pairs:
        raise SystemExit(f"no val images under {root / 'val'}")
    return pairs


def score(model, pairs, panel_indices):
    """Val scores through the Segmenter at each image's own size; the panel label maps."""
    from keras_deeplab.evaluation import Segmenter
    from keras_deeplab.evaluation.metrics import ConfusionMatrix

    segmenter = Segmenter(model)
    matrix = ConfusionMatrix(11, ignore_label=255)
    panels = {}
    start = time.perf_counter()
    for i, (_, image, labels) in enumerate(pairs):
        (predicted,) = segmenter.predict([image])
        matrix.update(labels.astype(np.int64), predicted)
        if i in panel_indices:
            panels[i] = predicted.astype(np.uint8)
    result = matrix.result()
    return {
        "miou": result["miou"],
        "global_accuracy": result["pixel_accuracy"],
        "class_average_accuracy": result["mean_accuracy"],
        "per_class_iou": [float(v) for v in result["per_class_iou"]],
        "val_images": len(pairs),
        "eval_seconds": time.perf_counter() - start,
    }, panels


def keras_latency(model, size, runs):
    """Median ms of the BN-folded inference model (what the Segmenter runs) on one image."""
    import tensorflow as tf

    from keras_deeplab.export.report import time_calls
    from keras_deeplab.optimize import optimize_for_inference

    fast = optimize_for_inference(model)
    x = tf.constant(np.full((1, *size, 3), 127.5, np.float32))
    forward = tf.function(lambda t: fast(t, training=False))
    return time_calls(lambda: np.asarray(forward(x)), runs=runs, warmup=2)["median_ms"]


def tflite_latency(model, size, runs, path):
    """Median ms of the fp32 `.tflite` at `size` (LiteRT, 2 threads, XNNPACK)."""
    from keras_deeplab.export import to_tflite
    from keras_deeplab.export.interpreter import measure_latency
    from keras_deeplab.export.tflite import UNALIGNED_WARNING
    from keras_deeplab.tflite_file import open_interpreter

    with warnings.catch_warnings():  # latency only: the 360x480 of the other columns
        warnings.filterwarnings("ignore", message=UNALIGNED_WARNING)
        to_tflite(model, path, input_size=size, verify=False)
    interpreter = open_interpreter(path, num_threads=2)
    interpreter.allocate_tensors()
    return measure_latency(interpreter, runs=runs, warmup=2)["median_ms"]


def run_row(row, settings, root, out_dir, init_files, pairs, panel_indices):
    """Trains, scores and measures one row; the row's record (resumes a finished row)."""
    import keras

    import keras_deeplab
    from keras_deeplab.training import train_from_config

    run_dir = Path(out_dir) / row.key
    config = recipe(settings, root, run_dir, row, init_files)
    fingerprint = hashlib.sha1(
        json.dumps(
            [config, settings["eval_limit"], settings["latency_size"]], sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    done = run_dir / "zoo_row.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("fingerprint") == fingerprint:
            print(f"{row.key}: finished earlier ({done}), reused", flush=True)
            record["reused"] = True
            return record, {int(k): v for k, v in np.load(run_dir / "panels.npz").items()}
    start_row_dir(run_dir, fingerprint, row.key)
    keras.backend.clear_session()
    row_start = time.perf_counter()
    print(f"{row.key}: training {row.model} ({row.init}) ...", flush=True)
    start = time.perf_counter()
    result = train_from_config(config)
    train_wall = time.perf_counter() - start
    model = result.model
    if result.precision != "float32":  # score/measure the float32 model (same weights)
        model = _float32_copy(model, run_dir)
    scores, panels = score(model, pairs, panel_indices)
    total, trainable = keras_deeplab.count_params(model)
    record = {
        "key": row.key,
        "family": row.family,
        "model": row.model,
        "options": row.options,
        "init": row.init,
        "note": row.note,
        "output_stride": model.output_stride,
        "params": int(total),
        "trainable_params": int(trainable),
        "macs": int(keras_deeplab.count_macs(model, EVAL_SIZE)),
        "steps": int(result.step),
        "resumed_from": result.resumed_from,  # an interrupted run of the same recipe
        "train_seconds": result.elapsed,
        "train_wall_seconds": train_wall,
        "train_images_per_second": _throughput(result, settings["batch_size"]),
        "train_precision": result.precision,
        "precision_choice": result.precision_choice,
        "final_loss": result.loss,
        **scores,
        "keras_ms": None,  # measured for all rows back to back: `measure_latencies`
        "tflite_ms": None,
        "run_dir": str(run_dir),
        "fingerprint": fingerprint,
    }
    record["row_seconds"] = time.perf_counter() - row_start  # training + scoring
    np.savez_compressed(run_dir / "panels.npz", **{str(k): v for k, v in panels.items()})
    done.write_text(json.dumps(jsonable(record, nan_as_none=True), indent=1))
    print(
        f"{row.key}: val mIoU {record['miou']:.4f}, global acc {record['global_accuracy']:.4f}, "
        f"{record['train_images_per_second']:.1f} img/s",
        flush=True,
    )
    return record, panels


def measure_latencies(records, settings):
    """Keras and TFLite latency of every row, back to back after all training.

    One pass over the trained float32 models in a few minutes, so that the ratios between rows
    are not moved by the host's speed drifting over the hour-long run (it did on 2026-11-30).
    """
    import keras

    from keras_deeplab.training.run_dir import load_run

    size, runs = settings["latency_size"], settings["latency_runs"]
    start = time.perf_counter()
    for record in records:
        keras.backend.clear_session()
        run_dir = Path(record["run_dir"])
        model = load_run(run_dir).model
        record["keras_ms"] = keras_latency(model, size, runs)
        record["tflite_ms"] = None
        if not settings["no_tflite"]:
            path = run_dir / f"{record['key']}_{size[0]}x{size[1]}.tflite"
            record["tflite_ms"] = tflite_latency(model, size, runs, path)
        print(
            f"{record['key']}: keras {record['keras_ms']:.0f} ms, "
            f"tflite {record['tflite_ms'] or float('nan'):.0f} ms",
            flush=True,
        )
    return time.perf_counter() - start


def start_row_dir(run_dir, fingerprint, key):
    """Keeps an interrupted run of this recipe (the trainer resumes it); removes one of another.

    The trainer resumes from any checkpoint in its directory, so a row left by a run with other
    settings would otherwise be "trained" by restoring its old final step. `fingerprint`: any
    string identifying the recipe (also used by `benchmarks.precision_trained`).
    """
    marker = run_dir / "zoo_fingerprint.txt"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        done = run_dir / "zoo_row.json"
        if marker.is_file():
            previous = marker.read_text().strip()
        elif done.is_file():
            previous = json.loads(done.read_text()).get("fingerprint")
        else:
            previous = None
        if previous != fingerprint:
            if not ((run_dir / "config.yaml").is_file() or done.is_file()):
                raise SystemExit(
                    f"{run_dir} exists and is not a camvid_zoo row directory; pass another --out "
                    "or remove it."
                )
            print(f"{key}: {run_dir} holds a run of other settings; training afresh", flush=True)
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")


def _throughput(result, batch_size):
    """Training images/s between the first and the last epoch end (tracing excluded)."""
    history = [h for h in result.history if "elapsed" in h]
    if len(history) >= 2 and history[-1]["elapsed"] > history[0]["elapsed"]:
        steps = history[-1]["step"] - history[0]["step"]
        return steps * batch_size / (history[-1]["elapsed"] - history[0]["elapsed"])
    return result.step * batch_size / result.elapsed


def _float32_copy(model, run_dir):
    """The trained weights in a float32 model (the run directory's `load_run`)."""
    from keras_deeplab.training.run_dir import load_run

    return load_run(run_dir).model


# --- main ---------------------------------------------------------------------------------


def build_parser():
    """The command line of `main` (also the recipe's defaults for other benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the <10 min check (see module doc)")
    parser.add_argument(
        "--models", default=None, help=f"comma-separated rows: {', '.join(ROW_BY_KEY)}"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--crop-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=0.007)
    parser.add_argument(
        "--global-clipnorm",
        type=float,
        default=5.0,
        help="clip every row's gradient to this global norm (0: no clipping)",
    )
    parser.add_argument(
        "--min-scale", type=float, default=0.75, help="random scale range, low end (official 0.5)"
    )
    parser.add_argument(
        "--max-scale", type=float, default=1.5, help="random scale range, high end (official 2.0)"
    )
    parser.add_argument("--class-weights", choices=("none", "median_frequency"), default="none")
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "auto"),
        default="auto",
        help="training precision (auto: the faster one per model on this hardware; the "
        "2026-12-01 results were trained with bfloat16)",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="linear warm-up (default steps // 10, <= 50)"
    )
    parser.add_argument(
        "--batch-norm",
        choices=("train", "frozen"),
        default="train",
        help="frozen: moving statistics (camvid_finetune's official mode; scratch rows need train)",
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="first N val images")
    parser.add_argument("--latency-size", default="360,480", help="H,W of the latency runs")
    parser.add_argument("--latency-runs", type=int, default=None)
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite latency")
    parser.add_argument("--bn-images", type=int, default=16, help="images for the BN statistics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="CamVid folder (default: shared camvid_full)")
    parser.add_argument(
        "--out", default=None, help="run directories (default artifacts/camvid_zoo[_quick])"
    )
    parser.add_argument("--results", default=None, help="results stem under benchmarks/results")
    return parser


def recipe_settings(args, train_images):
    """The recipe's settings from parsed arguments and the number of training images."""
    base = QUICK if args.quick else FULL
    settings = {
        "steps": args.steps or base["steps"],
        "batch_size": args.batch_size or base["batch_size"],
        "crop_size": args.crop_size or base["crop_size"],
        "eval_limit": args.eval_limit if args.eval_limit is not None else base["eval_limit"],
        "latency_runs": args.latency_runs or base["latency_runs"],
        "latency_size": [int(v) for v in args.latency_size.split(",")],
        "learning_rate": args.learning_rate,
        "min_scale": args.min_scale,
        "max_scale": args.max_scale,
        "global_clipnorm": args.global_clipnorm or None,
        "class_weights": None if args.class_weights == "none" else args.class_weights,
        "precision": args.precision,
        "seed": args.seed,
        "batch_norm": args.batch_norm,
        "steps_per_epoch": None,
        "no_tflite": args.no_tflite,
        "quick": args.quick,
    }
    settings["warmup_steps"] = (
        args.warmup_steps if args.warmup_steps is not None else min(50, settings["steps"] // 10)
    )
    # Epochs (the data order's unit) are the split, or a quarter of a short run, so that the
    # images/s can be taken between epoch ends, without the first step's tracing.
    epoch = train_images // settings["batch_size"]
    settings["steps_per_epoch"] = max(1, min(epoch, settings["steps"] // 4))
    return settings


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows = parse_rows(args.models, args.quick)
    root = data_root(args.data)
    import keras_deeplab.data as data_module

    train_images = data_module.load_data(root, "train").num_examples  # scans every file once
    settings = recipe_settings(args, train_images)
    stem = args.results or ("camvid_zoo_quick" if args.quick else "camvid_zoo")
    out_dir = Path(args.out or f"artifacts/{stem}")
    results_path = (
        RESULTS_DIR / f"{stem}.json"
        if args.results is None or "/" not in stem
        else Path(stem + ".json")
    )

    from benchmarks.camvid_zoo_report import write_reports

    started, ticks = time.time(), cpu_times()
    init_files = None
    if any(r.init != "scratch" for r in rows):
        init_files = prepare_google_weights(out_dir / "_init", root, args.bn_images)
        print(f"Google weights: {init_files['bn_layers']} BatchNorms re-parameterised", flush=True)
    pairs = val_images(root, settings["eval_limit"])
    if len(pairs) > max(PANEL_IMAGES):
        panel_indices = list(PANEL_IMAGES)
    else:  # --eval-limit: three images spread over the scored ones
        panel_indices = sorted({0, len(pairs) // 2, len(pairs) - 1})
    from keras_deeplab.training.trainer import NonFiniteLossError

    records, panels, skipped, diverged = [], {}, [], []
    for row in rows:
        try:
            record, row_panels = run_row(
                row, settings, root, out_dir, init_files, pairs, panel_indices
            )
        except NonFiniteLossError as error:  # a result of the recipe, not a crash of the run
            print(f"{row.key}: DIVERGED: {error}", flush=True)
            diverged.append(
                {
                    "key": row.key,
                    "model": row.model,
                    "init": row.init,
                    "error": str(error).splitlines()[0],
                }
            )
            continue
        except ValueError as error:  # the registry refuses the row (e.g. a backbone)
            if "defined on" not in str(error) and "backbone" not in str(error):
                raise
            print(f"{row.key}: SKIPPED: {error}", flush=True)
            skipped.append(
                {
                    "key": row.key,
                    "model": row.model,
                    "options": row.options,
                    "reason": str(error).splitlines()[0],
                }
            )
            continue
        records.append(record)
        panels[row.key] = row_panels
    latency_seconds = measure_latencies(records, settings) if records else 0.0
    reference = next((r for r in records if r["family"] == "deeplabv3"), None)
    for r in records:
        for key in ("keras_ms", "tflite_ms"):
            ref = reference and reference[key]
            r[f"{key}_ratio"] = r[key] / ref if ref and r[key] else None
    record = {
        "kind": _kind(args, settings, rows),
        "command": "python -m benchmarks.camvid_zoo "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.time() - started,
        "latency_pass_seconds": latency_seconds,
        "settings": settings,
        "recipe_example": recipe(settings, root, out_dir / "ROW", rows[0], init_files or {}),
        "data": {
            "root": str(root),
            "train": train_images,
            "val_scored": len(pairs),
            "eval_size": list(EVAL_SIZE),
        },
        "google_weights": {k: str(v) for k, v in (init_files or {}).items()},
        "machine": {**_machine(), "cpu_steal_share": steal_share(ticks)},
        "class_names": _class_names(),
        "rows": records,
        "skipped": skipped,
        "diverged": diverged,
        "not_in_default": [
            {"key": r.key, "note": r.note} for r in ROWS if not r.default and r not in rows
        ],
        "panel_images": [pairs[i][0] for i in panel_indices],
    }
    write_reports(record, results_path, panels, [pairs[i] for i in panel_indices])
    print(f"wrote {results_path} (+ .md, .png, _panels.png) in {record['wall_seconds']:.0f}s")


def _kind(args, settings, rows):
    """ "quick run", "full run" (the default settings and rows) or "custom run"."""
    if args.quick:
        return "QUICK RUN (not the full run)"
    defaults = [r for r in ROWS if r.default]
    parser = build_parser()
    flags = ("learning_rate", "min_scale", "max_scale", "global_clipnorm", "class_weights")
    flags += ("precision", "warmup_steps", "batch_norm", "seed", "bn_images", "data", "no_tflite")
    same = all(settings[k] == v for k, v in FULL.items()) and rows == defaults
    same = same and all(getattr(args, k) == parser.get_default(k) for k in flags)
    return "full run" if same and settings["latency_size"] == list(EVAL_SIZE) else "custom run"


def _class_names():
    from keras_deeplab.data.folders import CAMVID

    return list(CAMVID["class_names"])


def _machine():
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags |= {f for f in line.split() if f.startswith("amx") or f == "avx512_bf16"}
    except OSError:
        pass
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": usable_cores(),
        "cpu_flags": sorted(flags),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


if __name__ == "__main__":
    main()
