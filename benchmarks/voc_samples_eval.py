"""mIoU of Google's official DeepLabV3 MobileNetV2 weights on the 8 VOC 2012 val samples.

Weights: `deeplabv3_257_mv_gpu.tflite` (DeepLabV3, MobileNetV2 depth 0.5, output stride 8,
VOC, 21 classes) converted with `keras_deeplab.weights.load_tflite`. Images and masks:
`../shared/data/voc2012_samples` (255 = ignore). Scores come from one confusion matrix
summed over the 8 images (`keras_deeplab.evaluation.ConfusionMatrix`); mIoU is the mean over
the classes present in the ground truth or the predictions (here the same 8 classes).

Rows:

* `file protocol`: exactly the check of the data's PROVENANCE.md: image PIL-bilinear-resized
  to 257x257, logits resized back to the image size with (half-pixel) bilinear, argmax. The
  published value is mIoU 0.7559 / pixel accuracy 0.9451; the script checks it.
* `257 input`: `Segmenter` on the same 257x257 image (multi-scale + flip), probabilities
  resized back to the image size, optionally the dense CRF at full resolution.
* `native`: the official DeepLab eval protocol: `Segmenter` on the full-resolution image,
  padded to k*8+1 with the mean pixel; single scale, multi-scale (0.5..1.75) + flip, and
  the dense CRF on the fused probabilities (presets of `keras_deeplab.crf`; they were tuned
  for DeepLab v1/v2 VGG / ResNet scores, not for this model).

Eight images are far too few for a benchmark of the method: read the numbers as a
reproducibility check and a smoke test of the pipeline, not as VOC val results.

Run: `python -m benchmarks.voc_samples_eval` (needs the `crf` extra for the CRF rows, else
`--no-crf`); writes `benchmarks/results/voc_samples_eval.json`. Not a test.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks._common import shared_data_dir

RESULTS_DIR = Path(__file__).parent / "results"
OFFICIAL = "deeplabv3_tflite/deeplabv3_257_mv_gpu.tflite"
REFERENCE = {"miou": 0.7559, "pixel_accuracy": 0.9451}
SIZE = 257
NUM_CLASSES = 21


def load_samples(data_dir):
    """`[(name, uint8 RGB image, uint8 mask)]` at the original size."""
    from PIL import Image

    root = data_dir / "voc2012_samples"
    samples = []
    for image_path in sorted((root / "JPEGImages").glob("*.jpg")):
        with Image.open(image_path) as image:
            rgb = np.asarray(image.convert("RGB"), np.uint8)
        with Image.open(root / "SegmentationClass" / f"{image_path.stem}.png") as mask:
            labels = np.asarray(mask, np.uint8)
        samples.append((image_path.stem, rgb, labels))
    return samples


def resize_257(rgb):
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR), np.float32)


def resize_back(array, hw):
    """Half-pixel bilinear resize [h, w, C] -> [H, W, C] (the file protocol's resize)."""
    import tensorflow as tf

    return tf.image.resize(array[None], hw, method="bilinear").numpy()[0]


def scores(confusion):
    result = confusion.result()
    return {
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "fw_iou": result["fw_iou"],
        "per_class_iou": {
            str(c): float(v) for c, v in enumerate(result["per_class_iou"]) if not np.isnan(v)
        },
    }


def evaluate(predictions, samples):
    from keras_deeplab.evaluation import ConfusionMatrix

    confusion = ConfusionMatrix(NUM_CLASSES)
    for labels, (_, _, mask) in zip(predictions, samples, strict=True):
        confusion.update(mask, labels)
    return scores(confusion)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF rows")
    parser.add_argument("--crf-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "voc_samples_eval.json"))
    args = parser.parse_args(argv)

    from keras_deeplab.crf import CRF_PRESETS, batch_crf, is_available
    from keras_deeplab.evaluation import OFFICIAL_EVAL_SCALES, Segmenter
    from keras_deeplab.weights import load_tflite

    if not args.no_crf and not is_available():
        raise SystemExit(
            "pydensecrf is missing: pip install 'keras-deeplab[crf]' (or pydensecrf2==1.1), "
            "or run with --no-crf."
        )

    official = shared_data_dir(OFFICIAL)  # stops with the fix when it is missing
    samples = load_samples(shared_data_dir())
    model = load_tflite(official)  # RGB 0..255 in, logits out, any size
    rows = []

    def add(protocol, scales, flip, crf, labels, seconds):
        row = {
            "protocol": protocol,
            "scales": scales,
            "flip": flip,
            "crf": crf,
            **evaluate(labels, samples),
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(
            f"{protocol:14s} scales={scales:9s} flip={'yes' if flip else 'no':3s} "
            f"crf={crf or '-':20s} mIoU={row['miou']:.4f} pixacc={row['pixel_accuracy']:.4f} "
            f"({row['seconds']} s)",
            flush=True,
        )
        return row

    multi = f"{OFFICIAL_EVAL_SCALES[0]:g}-{OFFICIAL_EVAL_SCALES[-1]:g}"
    shapes = [mask.shape for _, _, mask in samples]
    images_257 = [resize_257(rgb) for _, rgb, _ in samples]

    # 1. The file's own protocol (reproduces the published 0.7559).
    start = time.perf_counter()
    labels = []
    for x, shape in zip(images_257, shapes, strict=True):
        logits = model(x[None], training=False).numpy()[0]
        labels.append(resize_back(logits, shape).argmax(-1))
    reference_row = add("file protocol", "1", False, None, labels, time.perf_counter() - start)

    # 2. 257 input, multi-scale + flip (probabilities resized back), then the CRF.
    seg = Segmenter(model, scales=OFFICIAL_EVAL_SCALES, flip=True, batch_size=2)
    start = time.perf_counter()
    probs_257 = [
        resize_back(p, shape)
        for p, shape in zip(seg.predict_proba(images_257), shapes, strict=True)
    ]
    add(
        "257 input",
        multi,
        True,
        None,
        [p.argmax(-1) for p in probs_257],
        time.perf_counter() - start,
    )

    # 3. Native resolution (official eval protocol), single scale and multi-scale + flip.
    rgbs = [rgb for _, rgb, _ in samples]
    start = time.perf_counter()
    probs_single = Segmenter(model).predict_proba(rgbs)
    add(
        "native",
        "1",
        False,
        None,
        [p.argmax(-1) for p in probs_single],
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    probs_multi = seg.predict_proba(rgbs)
    add(
        "native",
        multi,
        True,
        None,
        [p.argmax(-1) for p in probs_multi],
        time.perf_counter() - start,
    )

    if not args.no_crf:
        for name in CRF_PRESETS:
            for protocol, scales, flip, probs in (
                ("257 input", multi, True, probs_257),
                ("native", "1", False, probs_single),
                ("native", multi, True, probs_multi),
            ):
                start = time.perf_counter()
                q = batch_crf(rgbs, probs, name, processes=args.crf_processes)
                add(
                    protocol,
                    scales,
                    flip,
                    name,
                    [m.argmax(-1) for m in q],
                    time.perf_counter() - start,
                )

    ok = (
        round(reference_row["miou"], 4) == REFERENCE["miou"]
        and round(reference_row["pixel_accuracy"], 4) == REFERENCE["pixel_accuracy"]
    )
    print(
        f"\nfile protocol: mIoU {reference_row['miou']:.4f} / pixel accuracy "
        f"{reference_row['pixel_accuracy']:.4f}; published {REFERENCE['miou']} / "
        f"{REFERENCE['pixel_accuracy']}: {'MATCH' if ok else 'MISMATCH'}\n"
    )
    print("| protocol | scales | flip | CRF | mIoU | pixel acc. | fw IoU |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['protocol']} | {row['scales']} | {'yes' if row['flip'] else 'no'} | "
            f"{row['crf'] or '-'} | {row['miou']:.4f} | {row['pixel_accuracy']:.4f} | "
            f"{row['fw_iou']:.4f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"reference": REFERENCE, "reference_match": ok, "rows": rows}, indent=2)
    )
    print(f"\nwrote {out}")
    if not ok:
        raise SystemExit("file protocol does not reproduce the published mIoU")


if __name__ == "__main__":
    main()
