"""`keras-deeplab` command line.

Subcommands: `models` (list the registered models), `table` (parameters and
multiply-adds per model), `demo` (build a model and segment an image; a
placeholder until training lands: the model is randomly initialised).
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_models(args):
    from keras_deeplab import list_models

    print("\n".join(list_models()))


def _cmd_table(args):
    from keras_deeplab.macs import markdown_table, zoo_rows

    print(markdown_table(zoo_rows(args.names or None, args.input_size), args.input_size))


def _demo_image(size):
    """A VOC sample from ../shared when present, else a deterministic synthetic picture."""
    import numpy as np
    from PIL import Image

    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012_samples"
    jpgs = sorted(sample.glob("**/*.jpg")) if sample.is_dir() else []
    if jpgs:
        return np.asarray(Image.open(jpgs[0]).convert("RGB").resize((size, size))), jpgs[0].name
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 255 // size, yy * 255 // size, ((xx + yy) % 64) * 4], -1)
    return img.astype("uint8"), "synthetic gradient"


def _cmd_demo(args):
    import numpy as np
    from PIL import Image

    import keras_deeplab

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"Building {args.model} (random initialisation; training arrives with the training issue)..."
    )
    model = keras_deeplab.create_model(args.model)
    total, trainable = keras_deeplab.count_params(model)
    macs = keras_deeplab.count_macs(model, (args.size, args.size))
    print(
        f"  parameters: {total:,} ({trainable:,} trainable); multiply-adds at {args.size}px: {macs / 1e9:.2f}G"
    )
    image, source = _demo_image(args.size)
    start = time.perf_counter()
    logits = model.predict(image[None].astype("float32"), verbose=0)
    elapsed = time.perf_counter() - start
    labels = logits[0].argmax(-1).astype("uint8")
    print(
        f"  segmented {source} at {image.shape[1]}x{image.shape[0]} in {elapsed:.2f}s; "
        f"logits {tuple(logits.shape)}"
    )
    palette = (np.random.default_rng(0).integers(0, 255, (256, 3))).astype("uint8")
    panel = np.concatenate([image, palette[labels]], axis=1)
    path = out / "demo_prediction.png"
    Image.fromarray(panel).save(path)
    print(f"  wrote {path} (image | predicted classes)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-deeplab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)
    table = sub.add_parser("table", help="parameters and multiply-adds of registered models")
    table.add_argument("names", nargs="*")
    table.add_argument("--input-size", type=int, default=513)
    table.set_defaults(func=_cmd_table)
    demo = sub.add_parser("demo", help="build a model and segment an image")
    demo.add_argument("--model", default="deeplabv3_mobilenetv2_dm05_os8")
    demo.add_argument("--size", type=int, default=257)
    demo.add_argument("--out", default="artifacts/demo")
    demo.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:
        print(f"keras-deeplab: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
