"""`keras-deeplab` command line.

Subcommands: `models`, `table` (parameters and multiply-adds), `presets`,
`convert` (official TFLite files or TF checkpoints to `.weights.h5`), `export`
(SavedModel / TFLite, verified), `eval`, `predict`, `train` (from a config) and
`demo` (train on synthetic shapes, evaluate, export).
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_models(args):
    from keras_deeplab import list_models

    print("\n".join(list_models()))


def _cmd_presets(args):
    from keras_deeplab.weights.loading import presets_markdown

    print(presets_markdown())


def _cmd_table(args):
    from keras_deeplab.macs import markdown_table, zoo_rows

    print(markdown_table(zoo_rows(args.names or None, args.input_size), args.input_size))


def _cmd_convert(args):
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"--out must end with .weights.h5 (Keras weights file); got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_tflite:
        from keras_deeplab.weights.tflite import convert_tflite

        name, config = convert_tflite(args.from_tflite, str(out))
        print(f"model: {name}")
        print("config: " + ", ".join(f"{k}={v!r}" for k, v in sorted(config.items())))
        print(f"Load it with keras_deeplab.create_model({name!r}, weights={str(out)!r})")
    else:
        if not args.model:
            raise ValueError(
                "--from-tf-checkpoint needs --model NAME (see `keras-deeplab models`)."
            )
        from keras_deeplab.weights.checkpoint import convert_tf_checkpoint

        model = convert_tf_checkpoint(
            args.from_tf_checkpoint,
            args.model,
            args.num_classes,
            str(out),
            backbone_only=args.backbone_only,
        )
        print(
            f"model: {args.model} (num_classes={args.num_classes}, {model.count_params():,} parameters)"
        )
        if args.backbone_only:
            print(f"Use it as backbone weights: create_model(NAME, backbone_weights={str(out)!r})")
        else:
            print(
                f"Load it with keras_deeplab.create_model({args.model!r}, "
                f"num_classes={args.num_classes}, weights={str(out)!r})"
            )
    print(f"wrote {out}")


def _load_for_export(args):
    import keras_deeplab

    if args.from_tflite:
        from keras_deeplab.weights.tflite import load_tflite

        return load_tflite(args.from_tflite)
    if not args.model:
        raise ValueError(
            "export needs --model NAME (see `keras-deeplab models`) or --from-tflite FILE."
        )
    return keras_deeplab.create_model(
        args.model, num_classes=args.num_classes, weights=args.weights
    )


def _print_report(report):
    diffs = report.get("max_abs_diff")
    if isinstance(diffs, dict):
        for output, value in diffs.items():
            print(f"  max abs diff {output}: {value:.3g}")
    elif diffs is not None:
        print(f"  max abs diff: {diffs:.3g}")
    for key in ("argmax_agreement", "class_map_agreement", "latency_ms", "size_bytes"):
        if key in report:
            print(f"  {key}: {report[key]}")


def _cmd_export(args):
    from keras_deeplab.export import VerificationError, to_saved_model, to_tflite

    model = _load_for_export(args)
    out = Path(args.out)
    report_path = Path(str(out).rstrip("/") + ".report.json")
    try:
        if args.format == "saved_model":
            report = to_saved_model(
                model, str(out), report_path=str(report_path), overwrite=args.overwrite
            )
        else:
            report = to_tflite(
                model,
                str(out),
                input_size=args.input_size,
                quantize=args.quantize,
                representative_data=args.representative_data,
                argmax=args.argmax,
                report_path=str(report_path),
            )
    except VerificationError as error:
        print(
            f"keras-deeplab: verification FAILED: {error}\nreport: {report_path}", file=sys.stderr
        )
        return 1
    print(f"exported {args.format} to {out} (verified against the Keras model)")
    _print_report(report)
    print(f"report: {report_path}")
    return 0


def _segmentation_model(args):
    """The model of eval/predict: a registered model + weights, or an official TFLite file."""
    import keras_deeplab

    if args.from_tflite:
        from keras_deeplab.weights.tflite import load_tflite

        return load_tflite(args.from_tflite)
    if not args.weights:
        raise ValueError("pass --weights W.weights.h5 (with --model NAME) or --from-tflite FILE.")
    return keras_deeplab.create_model(
        args.model, num_classes=args.num_classes, weights=args.weights
    )


def _segmenter(args, model):
    from keras_deeplab.evaluation import Segmenter

    scales = tuple(float(s) for s in args.scales.split(",")) if args.scales else (1.0,)
    crf = None
    if args.crf is not None:
        crf = args.crf or "deeplabv2_resnet101"
    return Segmenter(model, scales=scales, flip=args.flip, crf=crf)


def _read_image(path):
    from PIL import Image, UnidentifiedImageError

    from keras_deeplab.data.base import pil_image_to_rgb

    try:
        with Image.open(path) as img:
            img.load()
            return pil_image_to_rgb(img, path)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"{path}: cannot read this image ({error}); is it a valid JPEG/PNG?"
        ) from None


def _cmd_eval(args):
    from keras_deeplab.data import load_data
    from keras_deeplab.evaluation.evaluate import evaluate, per_class_table, write_evaluation

    model = _segmentation_model(args)
    num_classes = int(model.output_shape[-1])
    data = load_data(  # folders are validated (every file decoded) before use
        args.data,
        args.split,
        skip_bad=args.skip_bad,
        **({} if args.data == "shapes" else {"num_classes": num_classes}),
    )
    if data.num_classes != num_classes:
        raise ValueError(
            f"{args.data}: the data has {data.num_classes} classes, the model {num_classes}; "
            "pass the matching --num-classes / weights."
        )
    result = evaluate(_segmenter(args, model), data, limit=args.limit)
    print(per_class_table(result))
    paths = write_evaluation(result, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def output_names(paths):
    """`{path: stem}` for files written into one output folder, whatever the input paths.

    Only the base name of each input is used (an input `../../x.jpg` or `/abs/x.jpg` gives
    `x`), characters other than letters, digits, `-`, `_` and `.` become `_`, a leading dot
    is dropped (no hidden or `..` names), and inputs sharing a stem (`a.jpg`, `a.png`)
    keep their extension (`a_jpg`, `a_png`) so no output overwrites another.
    """
    import re

    def clean(text):
        text = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")
        return text or "image"

    paths = [Path(p) for p in paths]
    stems = [clean(p.stem) for p in paths]
    names = {}
    for path, stem in zip(paths, stems, strict=True):
        if stems.count(stem) > 1:
            stem = clean(f"{path.stem}_{path.suffix.lstrip('.')}")
        names[path] = stem
    return names


def _cmd_predict(args):
    from tqdm import tqdm

    from keras_deeplab.data.base import IMAGE_EXTENSIONS
    from keras_deeplab.evaluation.evaluate import save_prediction

    source = Path(args.input)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder.")
    elif source.is_file():
        files = [source]
    else:
        raise ValueError(f"{source}: no such image or folder.")
    segmenter = _segmenter(args, _segmentation_model(args))
    names = output_names(files)
    for path in tqdm(files, desc="predicting", unit="img"):
        image = _read_image(path)
        (labels,) = segmenter.predict([image])
        save_prediction(image, labels, args.out, names[path])
    print(f"wrote {len(files)} predictions (labels, overlays, panels) to {args.out}")


def _add_model_arguments(parser):
    parser.add_argument(
        "--model", default="deeplabv3_mobilenetv2_dm05_os8", help="registered model"
    )
    parser.add_argument("--weights", help=".weights.h5 file or preset name")
    parser.add_argument("--from-tflite", metavar="FILE", help="an official DeepLab .tflite instead")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument(
        "--scales", help="comma-separated eval scales, e.g. 0.5,0.75,1,1.25,1.5,1.75"
    )
    parser.add_argument("--flip", action="store_true", help="add left-right flipped inputs")
    parser.add_argument(
        "--crf",
        nargs="?",
        const="",
        default=None,
        metavar="PRESET",
        help="dense CRF post-processing (preset: deeplabv2_resnet101 (default), deeplabv1_largefov)",
    )


def _cmd_train(args):
    from keras_deeplab.training import train_from_config

    overrides = list(args.overrides)
    if args.skip_bad:
        overrides.append("data.options.skip_bad=true")
    result = train_from_config(args.config, overrides)
    print(f"trained to step {result.step} ({result.elapsed:.0f}s); checkpoint: {result.checkpoint}")
    if result.metrics:
        print(
            f"eval mIoU {result.metrics['miou']:.4f}, pixel accuracy {result.metrics['pixel_accuracy']:.4f}"
        )
    if result.log_dir:
        print(f"TensorBoard: tensorboard --logdir {result.log_dir}")


def _training_curve(history, path, loss_label="training loss"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [h["loss"] for h in history], "o-", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label)
    evaluated = [h for h in history if "miou" in h]
    if evaluated:
        ax2 = ax.twinx()
        ax2.plot(
            [h["step"] for h in evaluated],
            [h["miou"] for h in evaluated],
            "s-",
            color="C1",
            label="val mIoU",
        )
        ax2.set_ylabel("held-out mIoU", color="C1")
        ax2.set_ylim(0, 1)
    ax.set_title("demo training on shapes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_is_run_dir(run):
    """Refuses to delete a folder that is not a training run directory (demo --out safety)."""
    entries = list(run.iterdir()) if run.is_dir() else [run]
    if entries and not (run / "config.yaml").is_file():
        raise ValueError(
            f"{run} exists and is not a keras-deeplab run directory (no config.yaml), so the "
            "demo will not delete it; pass another --out or remove it yourself."
        )


def _cmd_demo(args):
    import shutil

    import numpy as np
    from PIL import Image

    from keras_deeplab.data import shapes
    from keras_deeplab.export import to_saved_model, to_tflite
    from keras_deeplab.training import load_config, train_from_config
    from keras_deeplab.training.summaries import overlay_grid

    out = Path(args.out)
    if (out / "run").exists() and not args.resume:
        _check_is_run_dir(out / "run")
        shutil.rmtree(out / "run")  # a fresh demo each time unless --resume
    out.mkdir(parents=True, exist_ok=True)
    config = Path(__file__).resolve().parents[1] / "configs" / "shapes_demo.yaml"
    overrides = [f"checkpoint.dir={out / 'run'}"] + list(args.overrides)
    print(
        f"1/3 training a DeepLabV3+ (MobileNetV2 x0.5) on the synthetic shapes data ({config.name})"
    )
    result = train_from_config(config, overrides)
    model = result.model
    miou = result.metrics["miou"] if result.metrics else float("nan")
    print(f"    step {result.step}, {result.elapsed:.0f}s; held-out shapes mIoU {miou:.4f}")
    if result.history:
        loss = load_config(config, overrides).loss
        label = "training loss"
        if loss.top_k_percent_pixels < 1:
            label += (
                f" (hardest {loss.top_k_percent_pixels:.0%} of pixels"
                f" from step {loss.hard_example_mining_step})"
            )
        _training_curve(result.history, out / "training_curve.png", label)

    val = shapes("val", num_examples=8)
    images, masks = zip(*val.dataset.as_numpy_iterator(), strict=True)
    images, masks = np.stack(images), np.stack(masks)
    predictions = model.predict(images.astype("float32"), verbose=0).argmax(-1)
    grid = overlay_grid(images, masks, predictions)
    Image.fromarray(np.concatenate(list(grid), axis=0)).save(out / "overlays.png")

    print("2/3 exporting a SavedModel (verified against the Keras model)")
    sm = to_saved_model(
        model,
        str(out / "saved_model"),
        overwrite=True,
        report_path=str(out / "saved_model.report.json"),
    )
    print(f"    max abs diff {sm['max_abs_diff']}, class-map agreement {sm['class_map_agreement']}")
    print("3/3 exporting an int8 TFLite (calibrated on shapes train images, verified)")
    calibration = [img for img, _ in shapes("train", num_examples=32).dataset.as_numpy_iterator()]
    size = images.shape[1]
    tfl = to_tflite(
        model,
        str(out / "demo_int8.tflite"),
        input_size=size,
        quantize="int8",
        representative_data=calibration,
        sample_images=list(images[:4]),
        report_path=str(out / "demo_int8.report.json"),
    )
    print(
        f"    argmax agreement with Keras {tfl.get('argmax_agreement')}, "
        f"{tfl.get('size_bytes', 0) / 1e6:.2f} MB"
    )
    print(f"\nheld-out shapes mIoU: {miou:.4f} (target >= 0.85)")
    for name in (
        "overlays.png",
        "training_curve.png",
        "saved_model",
        "demo_int8.tflite",
        "saved_model.report.json",
        "demo_int8.report.json",
        "run",
    ):
        print(f"  {out / name}")


def build_parser():
    """The `keras-deeplab` argument parser (also used to check the README's commands)."""
    parser = argparse.ArgumentParser(prog="keras-deeplab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)
    sub.add_parser("presets", help="named weights presets and how to create them").set_defaults(
        func=_cmd_presets
    )
    table = sub.add_parser("table", help="parameters and multiply-adds of registered models")
    table.add_argument("names", nargs="*")
    table.add_argument("--input-size", type=int, default=513)
    table.set_defaults(func=_cmd_table)
    convert = sub.add_parser(
        "convert", help="convert official TFLite files or TF checkpoints to .weights.h5"
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-tflite", metavar="FILE", help="official DeepLab .tflite file")
    source.add_argument(
        "--from-tf-checkpoint", metavar="PREFIX", help="official checkpoint prefix (.../model.ckpt)"
    )
    convert.add_argument("--model", help="registered model name (checkpoints only)")
    convert.add_argument("--num-classes", type=int, default=21, help="classes of the checkpoint")
    convert.add_argument(
        "--backbone-only", action="store_true", help="load only the backbone (ImageNet checkpoints)"
    )
    convert.add_argument("--out", required=True, help="output .weights.h5 path")
    convert.set_defaults(func=_cmd_convert)
    export = sub.add_parser("export", help="export to SavedModel or TFLite, verified")
    export.add_argument("--model", help="registered model name")
    export.add_argument("--weights", help=".weights.h5 file or preset name")
    export.add_argument("--from-tflite", metavar="FILE", help="an official DeepLab .tflite instead")
    export.add_argument("--num-classes", type=int, default=21)
    export.add_argument("--format", choices=("saved_model", "tflite"), required=True)
    export.add_argument(
        "--quantize", choices=("none", "float16", "dynamic", "int8"), default="none"
    )
    export.add_argument("--input-size", type=int, default=513, help="TFLite input size")
    export.add_argument("--representative-data", metavar="DIR", help="images for int8 calibration")
    export.add_argument("--argmax", action="store_true", help="TFLite outputs a uint8 class map")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing SavedModel dir"
    )
    export.add_argument("--out", required=True)
    export.set_defaults(func=_cmd_export)
    evaluate = sub.add_parser("eval", help="mIoU of a model on a dataset, with pictures")
    evaluate.add_argument("--data", required=True, help="dataset folder, 'shapes' or 'tfds:NAME'")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only")
    evaluate.add_argument("--out", default="artifacts/eval")
    evaluate.add_argument(
        "--skip-bad", action="store_true", help="leave out bad image/mask pairs (listed)"
    )
    _add_model_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_eval)
    predict = sub.add_parser("predict", help="segment images: palette PNGs, overlays, panels")
    predict.add_argument("input", help="an image or a folder of images")
    predict.add_argument("--out", default="artifacts/predict")
    _add_model_arguments(predict)
    predict.set_defaults(func=_cmd_predict)
    train = sub.add_parser("train", help="train from a YAML/JSON config (resumes if interrupted)")
    train.add_argument("--config", required=True)
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100")
    train.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out bad image/mask pairs found by the up-front scan (counted and listed)",
    )
    train.set_defaults(func=_cmd_train)
    demo = sub.add_parser("demo", help="train on synthetic shapes, evaluate, export (CPU, ~5 min)")
    demo.add_argument("--out", default="artifacts/demo")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    demo.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as error:
        print(f"keras-deeplab: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # e.g. training.NonFiniteLossError (last good checkpoint kept)
        print(f"keras-deeplab: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
