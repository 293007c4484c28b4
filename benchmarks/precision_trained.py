"""bfloat16 against float32 inference on TRAINED weights of the large models (issue 17).

Google's MobileNetV2 file is the only pretrained DeepLab offline, so the VOC-sample check
(`benchmarks.run`'s `precision_check`) covers that model alone. Here each large model is
first trained on CamVid (`camvid_full` train, the CamVid comparison's recipe from
`benchmarks.camvid_zoo.recipe`: crop 225, batch 8, momentum SGD, poly LR, from random
initialisation, `--steps` steps in bfloat16), then `verify_precision` runs the trained weights
through the Segmenter's default inference path in float32 and in bfloat16 on the CamVid val
images at 360x480: argmax agreement and the val mIoU in both precisions. A short training
gives real decision boundaries (not those of random weights, where near-ties make agreement
meaningless); its mIoU is low and says nothing about the architecture.

`--runs DIR [DIR ...]` checks runs trained elsewhere instead (e.g. the CamVid comparison's
rows under `artifacts/camvid_zoo/`: `keras-deeplab train` run directories).

Run: `python -m benchmarks.precision_trained [--models a b] [--steps N] [--val N] [--out DIR]`
or `[--runs DIR ...]`. Trained runs go to `--out/<model>/` (reused when finished with the same
recipe); results to `benchmarks/results/precision_trained.{json,md}`. Not a test.

Measured so far (2-core AMX Xeon, 2026-11-30): 150 steps are too few for the large models
from scratch: `deeplabv3plus_resnet50` reached val mIoU 0.029 (one class nearly everywhere,
agreement 96.1% on near-tied logits): not evidence. Use several hundred steps, or `--runs`.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from benchmarks import camvid_zoo
from benchmarks._common import RESULTS_DIR
from benchmarks.camvid_zoo import FULL, Row, data_root, recipe, val_images
from benchmarks.machine import machine_info

MODELS = ("deeplabv3plus_resnet50", "deeplabv3plus_xception65")


def train_or_reuse(name, recipe_settings, root, out_dir):
    """The float32 model of `name` trained with `recipe_settings` (a finished run is reused)."""
    from keras_deeplab.training import train_from_config
    from keras_deeplab.training.run_dir import load_run

    run_dir = Path(out_dir) / name
    config = recipe(recipe_settings, root, run_dir, Row(name, name, name, {}, "scratch"), {})
    done = run_dir / "precision_trained.json"
    if done.is_file() and json.loads(done.read_text()).get("config") == config:
        print(f"{name}: trained earlier ({run_dir}), reused", flush=True)
        return load_run(run_dir).model, json.loads(done.read_text())["train_seconds"]
    fingerprint = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    camvid_zoo.start_row_dir(run_dir, fingerprint, name)  # no stale checkpoint is resumed
    print(f"{name}: training {recipe_settings['steps']} steps on CamVid ...", flush=True)
    start = time.perf_counter()
    train_from_config(config)
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"config": config, "train_seconds": seconds}))
    return load_run(run_dir).model, seconds  # float32 (the run is rebuilt from model.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--runs", nargs="+", default=None, help="check these trained runs")
    parser.add_argument("--batch-size", type=int, default=FULL["batch_size"])
    parser.add_argument("--crop-size", type=int, default=FULL["crop_size"])
    parser.add_argument("--val", type=int, default=None, help="val images (default: all 101)")
    parser.add_argument("--data", default=None, help="camvid_full folder")
    parser.add_argument("--out", default="artifacts/precision_trained")
    parser.add_argument("--results", default="precision_trained")
    args = parser.parse_args(argv)

    from keras_deeplab.evaluation.segmenter import verify_precision
    from keras_deeplab.precision import describe_choice

    root = data_root(args.data)
    pairs = val_images(root, args.val)
    images = [image for _, image, _ in pairs]
    labels = [truth for _, _, truth in pairs]
    report = {
        "command": "python -m benchmarks.precision_trained "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "auto": describe_choice("auto"),
        "steps": args.steps,
        "data": f"camvid_full val, {len(pairs)} images at 360x480",
        "rows": [],
    }
    if args.runs:
        from keras_deeplab.training.run_dir import load_run

        report["steps"] = None
        jobs = [(Path(run).name, lambda run=run: (load_run(run).model, None)) for run in args.runs]
    else:
        import keras_deeplab.data as data_module

        zoo_args = camvid_zoo.build_parser().parse_args(
            ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            + ["--crop-size", str(args.crop_size)]
        )  # the comparison's recipe, its defaults included (bfloat16 training)
        train_images = data_module.load_data(root, "train").num_examples
        recipe_settings = camvid_zoo.recipe_settings(zoo_args, train_images)
        jobs = [
            (name, lambda name=name: train_or_reuse(name, recipe_settings, root, args.out))
            for name in args.models
        ]
    for name, load in jobs:
        model, train_seconds = load()
        start = time.perf_counter()
        check = verify_precision(model, "bfloat16", images, labels)
        row = {
            "model": name,
            "train_seconds": train_seconds,
            "check_seconds": time.perf_counter() - start,
            **check,
        }
        print(
            f"{name}: agreement {100 * row['agreement']:.2f}%, val mIoU fp32 "
            f"{row['miou_float32']:.4f}, bf16 {row['miou']:.4f} "
            f"({row['miou_difference']:+.4f})",
            flush=True,
        )
        report["rows"].append(row)
    stem = RESULTS_DIR / args.results
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{stem}.md").write_text(render(report))
    print(render(report))
    return report


def render(report):
    """Markdown table of a report."""
    lines = [
        f"# bfloat16 vs float32 on trained weights ({report['data']})",
        "",
        f"`{report['command'].strip()}`; {report['auto']}; "
        + (
            f"each model trained {report['steps']} steps on CamVid train from random "
            f"initialisation (bfloat16)."
            if report["steps"]
            else "trained runs loaded from their run directories."
        ),
        "",
        "| model | argmax agreement | val mIoU fp32 | val mIoU bf16 | difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {100 * r['agreement']:.2f}% | {r['miou_float32']:.4f} | "
            f"{r['miou']:.4f} | {r['miou_difference']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
