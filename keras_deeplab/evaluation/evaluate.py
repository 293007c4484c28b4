"""Dataset evaluation and prediction files: what `keras-deeplab eval` / `predict` write.

`evaluate` runs a `Segmenter` over a `SegmentationData` source, one image at a time at
its own size (the official protocol: pad to k * OS + 1, crop back), and accumulates a
confusion matrix. `write_evaluation` saves the per-class table (CSV), the scores (JSON)
and a confusion-matrix picture (PNG); `save_prediction` writes a palette label PNG, a
colour overlay and an image | prediction panel.
"""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from keras_deeplab._json import jsonable
from keras_deeplab._progress import progress as progress_bar
from keras_deeplab.data.palette import overlay, voc_palette
from keras_deeplab.evaluation.metrics import ConfusionMatrix


def evaluate(segmenter, data, limit=None, progress=True):
    """Scores of `segmenter` on `data` (dict: miou, per_class_iou, pixel_accuracy, ...)."""
    matrix = ConfusionMatrix(data.num_classes, ignore_label=data.ignore_label)
    total = data.num_examples if limit is None else min(limit, data.num_examples or limit)
    dataset = data.dataset if limit is None else data.dataset.take(limit)
    for image, mask in progress_bar(
        dataset.as_numpy_iterator(),
        total=total,
        disable=not progress,
        desc="evaluating",
        unit="img",
    ):
        (labels,) = segmenter.predict([image])
        matrix.update(mask.astype(np.int64), labels)
    result = matrix.result()
    result["num_images"] = int(total) if total is not None else None
    result["class_names"] = list(data.class_names)
    return result


def per_class_table(result):
    """Plain-text table of the per-class IoU plus the summary scores."""
    names = result["class_names"]
    width = max(len(n) for n in names + ["pixel accuracy"])
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in zip(names, result["per_class_iou"], strict=True):
        lines.append(f"{name:<{width}}  {'  n/a' if np.isnan(iou) else f'{iou:.4f}'}")
    lines.append(f"{'mIoU':<{width}}  {result['miou']:.4f}")
    lines.append(f"{'pixel accuracy':<{width}}  {result['pixel_accuracy']:.4f}")
    lines.append(f"{'fw IoU':<{width}}  {result['fw_iou']:.4f}")
    return "\n".join(lines)


def confusion_png(confusion, class_names, path):
    """Row-normalised confusion matrix picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_evaluation(result, out_dir):
    """Writes `per_class.csv`, `scores.json` and `confusion_matrix.png`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "per_class.csv",
        "json": out / "scores.json",
        "confusion_png": out / "confusion_matrix.png",
    }
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "iou"])
        for name, iou in zip(result["class_names"], result["per_class_iou"], strict=True):
            writer.writerow([name, "" if np.isnan(iou) else f"{iou:.6f}"])
    paths["json"].write_text(json.dumps(jsonable(result, nan_as_none=True), indent=2))
    confusion_png(result["confusion"], result["class_names"], paths["confusion_png"])
    return paths


def save_prediction(image, labels, out_dir, stem, palette=None):
    """Writes `<stem>.png` (palette labels), `<stem>_overlay.png` and `<stem>_panel.png`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = voc_palette() if palette is None else palette
    label_png = Image.fromarray(labels.astype(np.uint8), mode="P")
    label_png.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    label_png.save(out / f"{stem}.png")
    image = np.asarray(image, np.uint8)
    blended = overlay(image, labels, palette=palette)
    Image.fromarray(blended).save(out / f"{stem}_overlay.png")
    colours = np.asarray(palette, np.uint8)[labels.astype(np.int64)]
    Image.fromarray(np.concatenate([image, colours], axis=1)).save(out / f"{stem}_panel.png")
    return out / f"{stem}.png"
