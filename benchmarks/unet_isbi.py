"""U-Net on the ISBI 2012 EM membrane images: train on 25, report pixel accuracy and IoU on 5.

Model: the paper's valid-padding U-Net (`create_model("unet")`: unpadded convs, centre-cropped
skips, 2x2 up-convolutions, dropout 0.5 at the end of the contracting path), 1 input channel,
2 classes, with the width reduced for this CPU (`--base-filters 16`: widths 16..256,
1,940,834 parameters instead of 31,030,658 at 64); `--model unet_same` trains the
same-padding variant instead.

Data: `../shared/data/isbi2012_membrane` (30 grayscale 512x512 slices). Fixed split: images
0..24 train, 25..29 held out. Classes: 1 = membrane (mask value 0, the foreground, about 22 %
of the pixels), 0 = cell interior (mask value 255).

Training (the paper's recipe where this CPU allows): every image mirror-padded by the
network's border (92 px); random tiles of `--tile` (a valid input, 444 -> 260 output) with the
label of the tile's output window; augmentation: the 8 flips/rotations and the paper's elastic
deformation (a 3x3 grid of random displacements, std 10 px, upsampled bicubically; the
image is resampled bilinearly, the mask by nearest neighbour; the paper resamples bicubically).
Loss: the package's pixel cross-entropy (`keras_deeplab.training.losses.segmentation_loss`,
no class or border weight map: the paper's w(x) is not used). Optimizer: Adam (the zhixuhao
Keras U-Net's choice; the paper's SGD with momentum 0.99 on batch 1 needs more steps than
this budget), learning rate polynomially decayed to 0 over the planned steps. A plain
`tf.function` train step rather than the package's `Trainer`, so that the tiles come from this
script's sampler (mirror padding, elastic deformation: not in the package's train pipeline).

Evaluation: each held-out image whole, by the paper's overlap-tile strategy: mirror-padded
by 92 px plus what makes it a valid size (512 -> 700 -> output 516), the first 512x512
logits kept (`keras_deeplab.architectures.unet.overlap_tile_padding`).

Run: `nice -n 10 python -m benchmarks.unet_isbi` (defaults: 500 steps, batch 2, at most 28
minutes of training; the time cap ends the run early on a loaded machine). Writes `benchmarks/results/unet_isbi.json`. Not a test.
"""

import argparse
import json
import platform
import time

import numpy as np

from benchmarks._common import RESULTS_DIR, shared_data_dir
from keras_deeplab._json import jsonable

TRAIN_IDS = tuple(range(25))
HELD_OUT_IDS = tuple(range(25, 30))
MEMBRANE = 1  # the foreground class


def load_pairs(ids):
    """`[(image float32 [512, 512], labels int32 [512, 512])]`, labels 1 = membrane."""
    from PIL import Image

    root = shared_data_dir("isbi2012_membrane")
    pairs = []
    for i in ids:
        with Image.open(root / "image" / f"{i}.png") as image:
            pixels = np.asarray(image.convert("L"), np.float32)
        with Image.open(root / "label" / f"{i}.png") as mask:
            values = np.asarray(mask, np.uint8)
        if set(np.unique(values)) - {0, 255}:
            raise SystemExit(f"label {i}.png has values other than 0 and 255")
        pairs.append((pixels, (values == 0).astype(np.int32)))
    return pairs


def bilinear_sample(image, rows, cols):
    """`image` [H, W] sampled at float coordinates (edge-clamped)."""
    h, w = image.shape
    rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = rows - r0, cols - c0
    top = image[r0, c0] * (1 - fc) + image[r0, c1] * fc
    bottom = image[r1, c0] * (1 - fc) + image[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


def elastic_field(size, rng, std=10.0):
    """Dense (dy, dx) displacements from a 3x3 grid of N(0, std) ones, bicubic upsampling."""
    import tensorflow as tf

    grid = rng.normal(0.0, std, (1, 3, 3, 2)).astype(np.float32)
    field = tf.image.resize(grid, (size, size), method="bicubic").numpy()[0]
    return field[..., 0], field[..., 1]


class Tiles:
    """Random augmented training tiles: `(images [B, tile, tile, 1], labels [B, out, out])`."""

    def __init__(self, pairs, tile, out, border, rng, elastic=True):
        self.tile, self.out, self.rng, self.elastic = tile, out, rng, elastic
        self.offset = (tile - out) // 2  # label window inside the tile
        # Mirror padding by the border: every label pixel can sit anywhere in the output.
        self.pairs = [
            (np.pad(image, border, mode="reflect"), np.pad(labels, border, mode="reflect"))
            for image, labels in pairs
        ]
        self.border = border

    def example(self):
        image, labels = self.pairs[self.rng.integers(len(self.pairs))]
        size = image.shape[0]
        top, left = self.rng.integers(0, size - self.tile + 1, size=2)
        rows, cols = np.mgrid[0 : self.tile, 0 : self.tile].astype(np.float32)
        rows, cols = rows + top, cols + left
        if self.elastic:
            dy, dx = elastic_field(self.tile, self.rng)
            rows, cols = rows + dy, cols + dx
        x = bilinear_sample(image, rows, cols)
        o, n = self.offset, self.out
        r = np.clip(np.rint(rows[o : o + n, o : o + n]), 0, size - 1).astype(int)
        c = np.clip(np.rint(cols[o : o + n, o : o + n]), 0, size - 1).astype(int)
        y = labels[r, c]
        k = self.rng.integers(4)
        x, y = np.rot90(x, k), np.rot90(y, k)
        if self.rng.integers(2):
            x, y = x[:, ::-1], y[:, ::-1]
        return np.ascontiguousarray(x)[..., None], np.ascontiguousarray(y)

    def batch(self, batch_size):
        examples = [self.example() for _ in range(batch_size)]
        return (
            np.stack([e[0] for e in examples]).astype(np.float32),
            np.stack([e[1] for e in examples]).astype(np.int32),
        )


def predict_whole(model, image, depth, valid):
    """Logits [H, W, 2] of one whole image (overlap-tile mirror padding for valid U-Nets)."""
    from keras_deeplab.architectures.unet import overlap_tile_padding

    h, w = image.shape
    if valid:
        (top, bottom), (left, right) = (overlap_tile_padding(s, depth) for s in (h, w))
        image = np.pad(image, ((top, bottom), (left, right)), mode="reflect")
    logits = np.asarray(model(image[None, ..., None].astype(np.float32), training=False))[0]
    return logits[:h, :w]


def scores(model, pairs, depth, valid):
    confusion = np.zeros((2, 2), np.int64)
    for image, labels in pairs:
        predicted = predict_whole(model, image, depth, valid).argmax(-1)
        confusion += np.bincount(labels.ravel() * 2 + predicted.ravel(), minlength=4).reshape(2, 2)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    return {
        "pixel_accuracy": float(np.trace(confusion) / confusion.sum()),
        "membrane_iou": float(iou[MEMBRANE]),
        "cell_iou": float(iou[1 - MEMBRANE]),
        "mean_iou": float(iou.mean()),
        "confusion_rows_true_cols_predicted": confusion.tolist(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", choices=("unet", "unet_same"))
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--tile", type=int, default=444, help="training input size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=28.0, help="training time cap")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--no-elastic", action="store_true")
    parser.add_argument(
        "--balanced",
        action="store_true",
        help="class weights balancing the training pixel frequencies (the paper's w_c)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS_DIR / "unet_isbi.json"))
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_deeplab
    from keras_deeplab.architectures.unet import valid_border, valid_output_size
    from keras_deeplab.training.losses import segmentation_loss

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    valid = args.model == "unet"
    model = keras_deeplab.create_model(
        args.model, base_filters=args.base_filters, input_shape=(None, None, 1), num_classes=2
    )
    depth = model.get_config()["depth"]
    if valid:
        out = valid_output_size(args.tile, depth)
        if out is None:  # the model's own error names the nearest valid sizes
            model(np.zeros((1, args.tile, args.tile, 1), np.float32))
        border = valid_border(depth)
    else:
        out, border = args.tile, 0
    train_pairs, held_out = load_pairs(TRAIN_IDS), load_pairs(HELD_OUT_IDS)
    tiles = Tiles(train_pairs, args.tile, out, border, rng, elastic=not args.no_elastic)
    class_weights = None
    if args.balanced:  # w_c = pixels / (classes * pixels of c): mean weight per pixel 1
        counts = np.bincount(np.concatenate([y.ravel() for _, y in train_pairs]), minlength=2)
        class_weights = [float(counts.sum() / (2 * c)) for c in counts]
    schedule = keras.optimizers.schedules.PolynomialDecay(args.learning_rate, args.steps, 0.0)
    optimizer = keras.optimizers.Adam(schedule)

    @tf.function(reduce_retracing=True)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = segmentation_loss(labels, logits, class_weights=class_weights)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    history, losses = [], []
    train_seconds, data_seconds, step = 0.0, 0.0, 0
    start = time.time()
    while step < args.steps and train_seconds < args.minutes * 60:
        t0 = time.time()
        images, labels = tiles.batch(args.batch)
        t1 = time.time()
        losses.append(float(train_step(images, labels)))
        t2 = time.time()
        data_seconds += t1 - t0
        train_seconds += t2 - t1
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {np.mean(losses[-25:]):.4f} train {train_seconds:.0f}s")
        if step % args.eval_every == 0 or step == args.steps:
            held = scores(model, held_out, depth, valid)
            history.append({"step": step, "train_seconds": train_seconds, **held})
            print(f"step {step}: held-out {held}")
    if not history or history[-1]["step"] != step:
        history.append(
            {"step": step, "train_seconds": train_seconds, **scores(model, held_out, depth, valid)}
        )
    final = history[-1]
    result = {
        "benchmark": "unet_isbi",
        "model": args.model,
        "options": {
            "base_filters": args.base_filters,
            "depth": depth,
            "padding": "valid" if valid else "same",
        },
        "parameters": model.count_params(),
        "data": "isbi2012_membrane: train 0..24, held out 25..29 (512x512, whole images)",
        "foreground": "membrane (mask value 0) = class 1",
        "train_tile": [args.tile, args.tile],
        "train_output": [out, out],
        "batch": args.batch,
        "steps": step,
        "planned_steps": args.steps,
        "optimizer": f"Adam, lr {args.learning_rate} polynomial decay to 0 over planned steps",
        "augmentation": "mirror pad, random tile, 8 flips/rot90"
        + ("" if args.no_elastic else ", elastic 3x3 grid std 10 px"),
        "loss": "keras_deeplab.training.losses.segmentation_loss, class weights "
        + (str(class_weights) if class_weights else "none"),
        "train_seconds": train_seconds,
        "data_seconds": data_seconds,
        "wall_seconds": time.time() - start,
        "final_train_loss_mean_last_25": float(np.mean(losses[-25:])),
        "held_out": {k: v for k, v in final.items() if k not in ("step", "train_seconds")},
        "history": history,
        "reference": "zhixuhao/unet README: accuracy about 0.97 (training data, Keras same-padding "
        "U-Net, 31M parameters)",
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    with open(args.output, "w") as f:
        json.dump(jsonable(result), f, indent=2)
    print(json.dumps(jsonable(result["held_out"]), indent=2))


if __name__ == "__main__":
    main()
