"""Fine-tune a DeepLab model on your own image/mask folders.

DATA is a folder `keras_deeplab.data.from_directory` understands: `images/` + `masks/`
(optionally per split: `images/train/` + `masks/train/`), `train/` + `trainannot/`
(SegNet/CamVid), or a VOC / Cityscapes / ADE20K tree. Masks are index PNGs (class ids,
255 = ignore). Every file is checked first (`--skip-bad` leaves bad pairs out); the run
checkpoints to OUT/run and resumes when re-run; the weights end in OUT/final.weights.h5.

    python examples/finetune_folders.py DATA --num-classes 2 --mask-threshold 127 \
        --weights pascal_voc_mnv2_dm05 --steps 2000 --out runs/mine
    python examples/finetune_folders.py --make-demo-data /tmp/toy --steps 20 --out /tmp/toy-run

`--make-demo-data DIR` first writes a small folder dataset (synthetic shapes, 5 classes) to
DIR in the `images/<split>/` + `masks/<split>/` layout and trains on it.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_demo_data(root, num_train=16, num_val=4, image_size=64):
    """Writes shapes images (JPEG) and index masks (PNG) as `images/<split>/` + `masks/<split>/`."""
    from keras_deeplab.data import generate_shapes

    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        images, masks = generate_shapes(split, count, image_size=image_size)
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
            Image.fromarray(image).save(root / "images" / split / f"{k:04d}.jpg", quality=95)
            Image.fromarray(mask, "L").save(root / "masks" / split / f"{k:04d}.png")
    (root / "classes.txt").write_text("background\ncircle\nsquare\ntriangle\nring\n")
    return root


def training_config(args):
    data_options = {"skip_bad": args.skip_bad}
    if args.num_classes is not None:
        data_options["num_classes"] = args.num_classes
    if args.mask_threshold is not None:
        data_options["mask_threshold"] = args.mask_threshold
    return {
        "model": {
            "name": args.model,
            "weights": args.weights,
            "num_classes": args.num_classes,
        },
        "data": {
            "source": "directory",
            "root": str(args.data),
            "split": args.split,
            "eval_split": args.val_split,
            "options": data_options,
            "crop_size": args.crop_size,
            "eval_batch_size": 1,
        },
        "optimizer": {"type": "momentum", "learning_rate": args.learning_rate},
        "schedule": {"policy": "poly", "power": 0.9},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "strategy": "auto",
            "fine_tune_batch_norm": args.batch_size >= 12,  # official: BN trains at batch >= 12
            "num_summary_images": 2,
        },
        "checkpoint": {
            "dir": str(Path(args.out) / "run"),
            "every_steps": max(1, args.steps // 4),
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", help="dataset folder (see above)")
    parser.add_argument("--make-demo-data", metavar="DIR", help="write a tiny dataset and use it")
    parser.add_argument("--split", default="train")
    parser.add_argument("--val-split", default="val", help="evaluated after training ('' = none)")
    parser.add_argument("--num-classes", type=int, help="default: classes.txt in DATA")
    parser.add_argument("--mask-threshold", type=int, help="binary 0/255 masks: 127")
    parser.add_argument("--model", default="deeplabv3_mobilenetv2_dm05", help="registered model")
    parser.add_argument("--weights", help="a .weights.h5 file or preset to start from")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=321)
    parser.add_argument("--learning-rate", type=float, default=0.007)
    parser.add_argument("--skip-bad", action="store_true", help="leave bad pairs out (listed)")
    parser.add_argument("--out", default="runs/finetune")
    args = parser.parse_args(argv)
    if args.make_demo_data:
        args.data = make_demo_data(args.make_demo_data)
    if not args.data:
        parser.error("give DATA or --make-demo-data DIR")
    args.val_split = args.val_split or None

    from keras_deeplab.training import train_from_config

    result = train_from_config(training_config(args))
    out = Path(args.out)
    result.model.save_weights(out / "final.weights.h5")
    print(f"trained to step {result.step}; weights: {out / 'final.weights.h5'}")
    if result.metrics:
        miou = result.metrics["miou"]
        per_class = np.round(result.metrics["per_class_iou"], 3).tolist()
        print(f"{args.val_split} mIoU {miou:.4f}; per class {per_class}")
    return result


if __name__ == "__main__":
    main()
