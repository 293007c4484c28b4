"""CamVid fine-tuning on this CPU: Google's official MobileNetV2 DeepLabV3 weights vs random init.

Model: `deeplabv3_mobilenetv2_dm05_os8` (DeepLabV3, MobileNetV2 depth 0.5, output stride 8),
11 CamVid classes (void -> ignore). Two runs with the same data, crop, batch, optimizer and
schedule (momentum SGD 0.9, LR 0.002 with poly decay, weight decay 4e-5, augmentation: scale 0.5-2.0,
crop, flip). LR 0.002 instead of the official 0.007: on 25 images 0.007 first wrecks the
pretrained features (official weights: val mIoU 0.120 -> 0.108 over the first 120 steps, 0.384
after 600; random init 0.333 after 600 at 0.007; `--learning-rate 0.007` reproduces it).

* `official`: every weight but the 21-class VOC logits from `deeplabv3_257_mv_gpu.tflite`
  (`keras_deeplab.weights.convert_tflite`); the 11-class logits start random. BatchNorm in
  the official fine-tuning mode (`fine_tune_batch_norm=False`: moving statistics, which the
  file has folded into the conv biases).
* `random`: the same model from random initialisation. Its BatchNorm must learn statistics
  (`fine_tune_batch_norm=True`, momentum 0.9): frozen statistics of a random network
  would be an identity, i.e. no normalisation at all.

Data: `../shared/data/camvid_segnet` (25 train images, every 15th of the 367; the full 101
val images at 360x480, evaluated at native size padded to k*8+1). The val mIoU is measured
every `--eval-every` steps and plotted against wall-clock training time.

Run: `python -m benchmarks.camvid_finetune` (defaults: 600 steps, crop 321, batch 8; about
20 minutes on 2 cores). Writes `benchmarks/results/camvid_finetune.json` and
`benchmarks/results/camvid_finetune.png`. Not a test.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR, shared_data_dir
from benchmarks.machine import machine_info
from keras_deeplab._json import jsonable

MODEL = "deeplabv3_mobilenetv2_dm05_os8"
OFFICIAL = "deeplabv3_tflite/deeplabv3_257_mv_gpu.tflite"


def _config(args, root, run_dir, weights, fine_tune_batch_norm):
    steps_per_epoch = args.train_images // args.batch_size
    return {
        "model": {"name": MODEL, "num_classes": 11, "weights": weights},
        "data": {
            "source": "directory",
            "root": str(root),
            "split": "train",
            "eval_split": "val",
            "crop_size": args.crop_size,
            "eval_batch_size": 1,
        },
        "optimizer": {"type": "momentum", "learning_rate": args.learning_rate},
        "schedule": {"policy": "poly", "power": 0.9},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "fine_tune_batch_norm": fine_tune_batch_norm,
            "batch_norm_momentum": None if not fine_tune_batch_norm else 0.9,
            "strategy": "default",
            "eval_every_epochs": max(1, round(args.eval_every / steps_per_epoch)),
            "verbose": 0,
        },
        "checkpoint": {
            "dir": str(run_dir),
            "every_steps": 10**9,
            "max_to_keep": 1,
            "tensorboard": False,
        },
    }


def run(name, config):
    from keras_deeplab.training import train_from_config

    print(f"{name}: training {config['train']['steps']} steps ...", flush=True)
    result = train_from_config(config)
    curve = [
        {
            "step": r["step"],
            "seconds": round(r["elapsed"], 1),
            "miou": round(r["miou"], 4),
            "pixel_accuracy": round(r["pixel_accuracy"], 4),
            "loss": round(r["loss"], 4),
        }
        for r in result.history
        if "miou" in r
    ]
    for point in curve:
        print(
            f"  step {point['step']:5d}  {point['seconds']:7.1f}s  "
            f"val mIoU {point['miou']:.4f}  pixel acc {point['pixel_accuracy']:.4f}"
        )
    return {"curve": curve, "final": result.metrics, "elapsed": result.elapsed}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        curve = result["curve"]
        ax.plot([p["seconds"] / 60 for p in curve], [p["miou"] for p in curve], "o-", label=name)
    ax.set_xlabel("wall-clock minutes on this CPU (training + the periodic val evaluations)")
    ax.set_ylabel("CamVid val mIoU (101 images, 11 classes)")
    ax.set_ylim(0, max(0.7, max(p["miou"] for r in results.values() for p in r["curve"]) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{MODEL}, 25 CamVid training images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=60, help="steps between val evals")
    parser.add_argument("--crop-size", type=int, default=321)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="official,random", help="comma-separated subset")
    parser.add_argument("--out", default=str(RESULTS_DIR / "camvid_finetune.json"))
    args = parser.parse_args(argv)

    from keras_deeplab.weights.tflite import convert_tflite

    data = shared_data_dir()
    root = data / "camvid_segnet"
    args.train_images = len(list((root / "train").glob("*.png")))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "official_voc.weights.h5"
        name, _ = convert_tflite(data / OFFICIAL, weights)
        if name != MODEL:
            raise SystemExit(f"{OFFICIAL} converted to {name}, expected {MODEL}")
        plans = {"official": (str(weights), False), "random": (None, True)}
        for run_name in args.runs.split(","):
            w, fine_tune_bn = plans[run_name]
            config = _config(args, root, tmp / run_name, w, fine_tune_bn)
            results[run_name] = run(run_name, config)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": MODEL,
        "command": "python -m benchmarks.camvid_finetune "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",) and not callable(v)},
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    out.write_text(json.dumps(jsonable(record, nan_as_none=True), indent=2, default=str))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    for run_name, result in results.items():
        best = max(result["curve"], key=lambda p: p["miou"]) if result["curve"] else None
        if best:
            print(
                f"{run_name}: final val mIoU {result['curve'][-1]['miou']:.4f} after "
                f"{result['curve'][-1]['seconds']:.0f}s; best {best['miou']:.4f} at step "
                f"{best['step']}"
            )


if __name__ == "__main__":
    main()
