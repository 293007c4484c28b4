"""`keras-deeplab` command line.

Subcommands: `models`, `table` (parameters and multiply-adds), `presets`,
`convert` (official TFLite files or TF checkpoints to `.weights.h5`), `export`
(SavedModel / TFLite, verified), `eval`, `predict`, `train` (from a config) and
`demo` (train on synthetic shapes, evaluate, export).

Nothing heavy is imported before the arguments are parsed, so `--help` and argument
errors answer at once. TensorFlow's start-up logs are hidden unless `--verbose`.
"""

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

DEFAULT_MODEL = "deeplabv3_mobilenetv2_dm05_os8"
DEFAULT_CLASSES = 21  # without weights to read the class count from (Pascal VOC)
CRF_PRESET_NAMES = ("deeplabv2_resnet101", "deeplabv1_largefov", "densecrf_default")
# keras_deeplab.precision.PRECISIONS (not imported here: `--help` must not load Keras).
PRECISION_CHOICES = ("auto", "float32", "bfloat16", "float16")


# ---------------------------------------------------------------- output hygiene


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"keras-deeplab: warning: {text}", file=sys.stderr)


@contextlib.contextmanager
def _quiet(verbose):
    """Hides native (C++) start-up logs and third-party deprecations; warnings on one line.

    Native libraries (TensorFlow, oneDNN, absl, LiteRT/XNNPACK) write to file descriptor 2
    directly; unless `verbose`, that descriptor points at /dev/null while Python's
    `sys.stderr` keeps writing to the terminal (our errors, warnings and progress bars).
    """
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    saved_stderr, replaced = sys.stderr, False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if sys.stderr.fileno() == 2:  # the real terminal (not a test's capture)
            sys.stderr.flush()
            sys.stderr = os.fdopen(
                os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
            )
            replaced = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    native = os.dup(2)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.showwarning = _one_line_warning
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(native, 2)
        os.close(native)
        if replaced:
            with contextlib.suppress(Exception):
                sys.stderr.close()
            sys.stderr = saved_stderr


# ---------------------------------------------------------------- models from arguments


def _tflite_input_size(path):
    from keras_deeplab.weights.tflite import inspect_tflite

    shape = inspect_tflite(path)["input_shape"]
    return int(shape[0]) if shape and shape[0] else None


def _load_model(args, need_weights=True):
    """`(model, class_names)` from --run / --weights / --from-tflite (+ --model, --num-classes).

    The class count comes from the run or the weights file when --num-classes is not given;
    a weights file of another class count than the model is an error here (evaluating,
    predicting or exporting with re-initialised logits would score garbage).
    """
    import keras_deeplab
    from keras_deeplab.training.run_dir import load_run, run_dir_of

    if args.from_tflite:
        if args.model or args.num_classes:
            raise ValueError(
                "--from-tflite reads the architecture and classes from the file; drop --model "
                "and --num-classes."
            )
        from keras_deeplab.weights.tflite import load_tflite

        return load_tflite(args.from_tflite), None
    run_path = args.run
    if run_path is None and args.weights and run_dir_of(args.weights) is not None:
        run_path = args.weights
    if run_path is not None:
        if run_dir_of(run_path) is None:
            raise ValueError(
                f"--run {run_path}: not a training run (a `keras-deeplab train` checkpoint.dir "
                "with model.json or config.yaml, its model.weights.h5 or a ckpt-N prefix)."
            )
        run = load_run(run_path)
        if args.model and args.model != run.name:
            raise ValueError(
                f"--model {args.model} differs from the run's model {run.name}; drop --model."
            )
        classes = int(run.model.output_shape[-1])
        if args.num_classes and args.num_classes != classes:
            raise ValueError(
                f"--num-classes {args.num_classes} differs from the run's {classes} classes; "
                "drop --num-classes."
            )
        print(f"model: {run.name} ({classes} classes) from {run.source}")
        return run.model, run.class_names
    if not args.weights:
        if need_weights:
            raise ValueError(
                "pass --run DIR (a training run), --weights FILE (.weights.h5, .keras or a preset "
                "name, with --model NAME) or --from-tflite FILE."
            )
        return keras_deeplab.create_model(
            args.model or DEFAULT_MODEL, num_classes=args.num_classes or DEFAULT_CLASSES
        ), None
    from keras_deeplab.weights.loading import load_weights, weights_num_classes

    file_classes = weights_num_classes(args.weights)
    num_classes = args.num_classes or file_classes or DEFAULT_CLASSES
    model = keras_deeplab.create_model(args.model or DEFAULT_MODEL, num_classes=num_classes)
    load_weights(model, args.weights, class_mismatch="error")
    return model, None


def _check_crf(args):
    if not getattr(args, "crf", False):
        return
    from keras_deeplab.crf import is_available

    if not is_available():
        raise ValueError(
            "--crf needs pydensecrf: pip install 'keras-deeplab[crf]' (a C++ compiler is "
            "needed to build it), or drop --crf."
        )


def _segmenter(args, model):
    from keras_deeplab.evaluation import Segmenter

    scales = (1.0,)
    if args.scales:
        try:
            scales = tuple(float(s) for s in args.scales.split(","))
        except ValueError:
            raise ValueError(
                f"--scales {args.scales!r}: give comma-separated numbers, e.g. 0.5,0.75,1"
            ) from None
    crf = args.crf_preset if args.crf else None
    return Segmenter(
        model,
        scales=scales,
        flip=args.flip,
        crf=crf,
        precision=args.precision,
        optimize=not args.no_optimize,
    )


def _state_precision(args):
    """Prints and returns the precision choice line, e.g. "precision auto -> bfloat16 (...)"."""
    from keras_deeplab.precision import describe_choice

    choice = describe_choice(args.precision)
    if getattr(args, "no_optimize", False):
        choice += ", graph rewrites off (--no-optimize)"
    print(choice)
    return choice


def _read_image(path):
    from PIL import Image, UnidentifiedImageError

    from keras_deeplab.data.decode import pil_image_to_rgb

    try:
        with Image.open(path) as img:
            img.load()
            return pil_image_to_rgb(img, path)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"{path}: cannot read this image ({error}); is it a valid JPEG/PNG? "
            "(--skip-bad leaves unreadable images out)"
        ) from None


# ---------------------------------------------------------------- commands


def _cmd_models(args):
    from keras_deeplab import list_models

    print("\n".join(list_models()))


def _cmd_presets(args):
    from keras_deeplab.weights.presets import presets_markdown

    print(presets_markdown())


def _cmd_table(args):
    from keras_deeplab.zoo import markdown_table, zoo_rows

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
    check = report.get("precision_check")
    if check:
        cached = " (cached)" if check.get("cached") else ""
        print(
            f"  {check['precision']} vs float32 argmax agreement: {check['agreement']:.4f} "
            f"on {check['images']} images{cached}"
        )


def _cmd_export(args):
    input_size = args.input_size
    if input_size is None:
        input_size = (_tflite_input_size(args.from_tflite) if args.from_tflite else None) or 513
    model, _ = _load_model(args, need_weights=False)
    if not (args.run or args.weights or args.from_tflite):
        print(
            "keras-deeplab: warning: no --run/--weights/--from-tflite: exporting randomly "
            "initialised weights.",
            file=sys.stderr,
        )
    from keras_deeplab.export import VerificationError, to_saved_model, to_tflite

    out = Path(args.out)
    report_path = Path(str(out).rstrip("/") + ".report.json")
    if args.format == "tflite" and args.precision != "float32":
        raise ValueError(
            f"--precision {args.precision} applies to --format saved_model; TFLite files take "
            "--quantize (none, float16, dynamic, int8) instead."
        )
    if args.format == "saved_model":
        _state_precision(args)
    try:
        if args.format == "saved_model":
            report = to_saved_model(
                model,
                str(out),
                report_path=str(report_path),
                overwrite=args.overwrite,
                precision=args.precision,
            )
        else:
            report = to_tflite(
                model,
                str(out),
                input_size=input_size,
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
    size = f" at {input_size}x{input_size}" if args.format == "tflite" else ""
    print(f"exported {args.format}{size} to {out} (verified against the Keras model)")
    _print_report(report)
    print(f"report: {report_path}")
    return 0


def _generated_names(names):
    return all(name == f"class_{i}" for i, name in enumerate(names))


def _cmd_eval(args):
    _check_crf(args)
    model, run_names = _load_model(args)
    from keras_deeplab.data import load_data
    from keras_deeplab.evaluation.evaluate import evaluate, per_class_table, write_evaluation

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
            "evaluate a model trained on this data (--run DIR or --weights FILE of "
            f"{data.num_classes} classes)."
        )
    choice = _state_precision(args)
    result = evaluate(_segmenter(args, model), data, limit=args.limit)
    result["precision"] = choice
    if run_names and _generated_names(result["class_names"]):
        result["class_names"] = list(run_names)
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
    from keras_deeplab.data.decode import IMAGE_EXTENSIONS

    source = Path(args.input)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder.")
    elif source.is_file():
        files = [source]
    else:
        raise ValueError(f"{source}: no such image or folder.")
    _check_crf(args)
    images = {}
    for path in files:  # read every image first: a bad file fails before the model loads
        try:
            images[path] = _read_image(path)
        except ValueError as error:
            if not args.skip_bad:
                raise
            print(f"keras-deeplab: skipped {error}", file=sys.stderr)
    if not images:
        raise ValueError(f"{source}: none of the {len(files)} images could be read.")
    model, _ = _load_model(args)
    _state_precision(args)
    segmenter = _segmenter(args, model)
    from keras_deeplab._progress import progress
    from keras_deeplab.evaluation.evaluate import save_prediction

    names = output_names(list(images))
    for path, image in progress(images.items(), desc="predicting", unit="img"):
        (labels,) = segmenter.predict([image])
        save_prediction(image, labels, args.out, names[path])
    skipped = len(files) - len(images)
    print(
        f"wrote {len(images)} predictions (labels, overlays, panels) to {args.out}"
        + (f"; skipped {skipped} unreadable image(s)" if skipped else "")
    )


def _recipe(config):
    if Path(config).is_file():
        return config
    from keras_deeplab.configs import recipe_path

    return recipe_path(config)


def _interrupted(config, overrides):
    """One line saying where the last checkpoint of an interrupted `train` run is."""
    try:
        from keras_deeplab.training import load_config

        run_dir = load_config(config, overrides).checkpoint.dir
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(run_dir))
    except Exception:  # noqa: BLE001 - reporting must not raise over the interrupt
        latest, run_dir = None, None
    if latest:
        return (
            f"keras-deeplab: interrupted; the last checkpoint is {latest}: run the same "
            "command again to resume from it."
        )
    where = f" in {run_dir}" if run_dir else ""
    return f"keras-deeplab: interrupted before the first checkpoint{where}; nothing to resume."


def _cmd_train(args):
    from keras_deeplab.training import train_from_config

    config = _recipe(args.config)
    overrides = list(args.overrides)
    if args.skip_bad:
        overrides.append("data.options.skip_bad=true")
    if args.precision is not None:
        overrides.append(f"train.precision={args.precision}")
    try:
        result = train_from_config(config, overrides)
    except KeyboardInterrupt:
        print(_interrupted(config, overrides), file=sys.stderr)
        return 130
    if result.resumed_from:
        print(f"resumed from {result.resumed_from}")
    if result.precision_choice:
        print(f"trained in {result.precision_choice}")
    print(f"trained to step {result.step} ({result.elapsed:.0f}s); checkpoint: {result.checkpoint}")
    if result.metrics:
        print(
            f"eval mIoU {result.metrics['miou']:.4f}, pixel accuracy {result.metrics['pixel_accuracy']:.4f}"
        )
    run_dir = Path(result.checkpoint).parent if result.checkpoint else None
    if run_dir is not None:
        print(f"use it with: keras-deeplab eval|predict|export --run {run_dir} ...")
    if result.log_dir:
        print(f"TensorBoard: tensorboard --logdir {result.log_dir}")


def _cmd_demo(args):
    if "tensorflow" not in sys.modules:
        # oneDNN for the demo's MobileNetV2 on AVX2 CPUs, where TF leaves it off: training
        # step 469 -> 307 ms on the 2-core AMD EPYC (docs/training.md "CPU kernels").
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from keras_deeplab.demo import run_demo

    try:
        run_demo(args.out, resume=args.resume, overrides=args.overrides)
    except KeyboardInterrupt:
        print(
            f"keras-deeplab: interrupted; `keras-deeplab demo --out {args.out} --resume` "
            "continues from the last checkpoint.",
            file=sys.stderr,
        )
        return 130


# ---------------------------------------------------------------- parser


class _HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to an option's help when it has a meaningful default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _verbose_parent():
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show TensorFlow's start-up logs and every library warning",
    )
    return parent


def _add_model_arguments(parser, weights_required=True):
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--run",
        metavar="DIR",
        help="a `keras-deeplab train` run directory (checkpoint.dir), its model.weights.h5 or a "
        "ckpt-N prefix: rebuilds the trained model, no --model/--num-classes needed",
    )
    source.add_argument(
        "--weights",
        metavar="FILE",
        help=".weights.h5 or .keras file, preset name, or run directory"
        + ("" if weights_required else " (default: random initialisation)"),
    )
    source.add_argument(
        "--from-tflite", metavar="FILE", help="an official DeepLab .tflite file instead"
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help=f"registered model (`keras-deeplab models`) for --weights (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classes of the model (default: read from the run or the weights file; "
        f"{DEFAULT_CLASSES} without weights)",
    )


def _add_segmenter_arguments(parser):
    parser.add_argument(
        "--scales", help="comma-separated eval scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 (default: 1)"
    )
    parser.add_argument("--flip", action="store_true", help="add left-right flipped inputs")
    parser.add_argument(
        "--crf", action="store_true", help="dense CRF post-processing (needs the [crf] extra)"
    )
    parser.add_argument(
        "--crf-preset",
        choices=CRF_PRESET_NAMES,
        default=CRF_PRESET_NAMES[0],
        help="CRF parameters, with --crf",
    )
    _add_precision_argument(parser)
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="run the model as built (default: BN folded + space-to-batch rewrites, same labels)",
    )


def _add_precision_argument(parser):
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="float32",
        help="inference precision; auto = bfloat16 on CPUs with AMX, AMD CPUs with AVX512-BF16 "
        "and recent GPUs, float16 on older GPUs, float32 otherwise (the choice is printed and "
        "recorded)",
    )


def build_parser():
    """The `keras-deeplab` argument parser (also used to check the README's commands)."""
    verbose = _verbose_parent()
    common = {"formatter_class": _HelpFormatter, "parents": [verbose]}
    parser = argparse.ArgumentParser(
        prog="keras-deeplab",
        description="DeepLab semantic segmentation in Keras: train, evaluate, predict, export.",
        **common,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list registered models", **common).set_defaults(func=_cmd_models)
    sub.add_parser(
        "presets", help="named weights presets and how to create them", **common
    ).set_defaults(func=_cmd_presets)
    table = sub.add_parser("table", help="parameters and multiply-adds of models", **common)
    table.add_argument("names", nargs="*", help="registered models (default: all)")
    table.add_argument("--input-size", type=int, default=513, help="square input side in pixels")
    table.set_defaults(func=_cmd_table)
    convert = sub.add_parser(
        "convert", help="convert official TFLite files or TF checkpoints to .weights.h5", **common
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-tflite", metavar="FILE", help="official DeepLab .tflite file")
    source.add_argument(
        "--from-tf-checkpoint", metavar="PREFIX", help="official checkpoint prefix (.../model.ckpt)"
    )
    convert.add_argument("--model", help="registered model name (checkpoints only)")
    convert.add_argument(
        "--num-classes", type=int, default=21, help="classes of the checkpoint (checkpoints only)"
    )
    convert.add_argument(
        "--backbone-only", action="store_true", help="load only the backbone (ImageNet checkpoints)"
    )
    convert.add_argument("--out", required=True, help="output .weights.h5 path")
    convert.set_defaults(func=_cmd_convert)

    export = sub.add_parser("export", help="export to SavedModel or TFLite, verified", **common)
    _add_model_arguments(export, weights_required=False)
    export.add_argument(
        "--format", choices=("saved_model", "tflite"), required=True, help="what to write"
    )
    export.add_argument(
        "--quantize",
        choices=("none", "float16", "dynamic", "int8"),
        default="none",
        help="TFLite weight/activation quantisation",
    )
    export.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help="TFLite input side in pixels (default: the --from-tflite file's own, else 513)",
    )
    export.add_argument("--representative-data", metavar="DIR", help="images for int8 calibration")
    export.add_argument("--argmax", action="store_true", help="TFLite outputs a uint8 class map")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing SavedModel dir"
    )
    _add_precision_argument(export)
    export.add_argument("--out", required=True, help="SavedModel directory or .tflite file")
    export.set_defaults(func=_cmd_export)

    evaluate = sub.add_parser("eval", help="mIoU of a model on a dataset, with pictures", **common)
    evaluate.add_argument("--data", required=True, help="dataset folder, 'shapes' or 'tfds:NAME'")
    evaluate.add_argument("--split", default="val", help="dataset split")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only")
    evaluate.add_argument("--out", default="artifacts/eval", help="folder for scores and PNGs")
    evaluate.add_argument(
        "--skip-bad", action="store_true", help="leave out bad image/mask pairs (listed)"
    )
    _add_model_arguments(evaluate)
    _add_segmenter_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    predict = sub.add_parser(
        "predict", help="segment images: palette PNGs, overlays, panels", **common
    )
    predict.add_argument("input", help="an image or a folder of images")
    predict.add_argument("--out", default="artifacts/predict", help="output folder")
    predict.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable images (listed)"
    )
    _add_model_arguments(predict)
    _add_segmenter_arguments(predict)
    predict.set_defaults(func=_cmd_predict)

    train = sub.add_parser(
        "train", help="train from a YAML/JSON config (resumes if interrupted)", **common
    )
    train.add_argument(
        "--config",
        required=True,
        help="a config file, or a shipped recipe name (e.g. shapes_demo; see configs/)",
    )
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100")
    train.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out bad image/mask pairs found by the up-front scan (counted and listed)",
    )
    train.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=None,
        help="compute precision (train.precision; default: the config's, float32): auto picks "
        "bfloat16 on AMX CPUs, AMD CPUs with AVX512-BF16 and GPUs of compute capability >= 8.0; "
        "float32 master weights and loss; float16 (loss-scaled) needs a GPU",
    )
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser(
        "demo", help="train on synthetic shapes, evaluate, export (2 CPU cores: 6-17 min)", **common
    )
    demo.add_argument("--out", default="artifacts/demo", help="output folder")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    demo.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False) or bool(os.environ.get("KERAS_DEEPLAB_VERBOSE"))
    with _quiet(verbose):
        try:
            return args.func(args) or 0
        except KeyboardInterrupt:
            print("keras-deeplab: interrupted.", file=sys.stderr)
            return 130
        except (ValueError, OSError) as error:
            print(f"keras-deeplab: error: {error}", file=sys.stderr)
            return 2
        except (
            RuntimeError
        ) as error:  # e.g. training.NonFiniteLossError (last good checkpoint kept)
            print(f"keras-deeplab: error: {error}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
