"""Cityscapes reader: `leftImg8bit/` + `gtFine/` (or `gtCoarse/`), label ids -> 19 train ids.

Layout: `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` and
`gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`. The label ids are mapped to the 19
train ids of cityscapesScripts `labels.py` (every other id -> ignore), as the official
DeepLab data (made with `createTrainIdLabelImgs.py`). If only `*_labelTrainIds.png` files
exist they are used as they are.
"""

from pathlib import Path

import numpy as np

from keras_deeplab.data.contract import DataError, listed
from keras_deeplab.data.files import file_source
from keras_deeplab.data.labels import fixed_classes, label_lut
from keras_deeplab.data.palette import CITYSCAPES_CLASSES

# label id -> train id for the 19 evaluated classes (cityscapesScripts labels.py).
LABEL_ID_TO_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def cityscapes_lut(ignore_label=255):
    """256-entry table: Cityscapes label id -> train id (others -> ignore_label)."""
    table = np.full(256, ignore_label, np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


def find_cityscapes_root(root):
    root = Path(root)
    for candidate in (root, root / "cityscapes"):
        if (candidate / "leftImg8bit").is_dir():
            return candidate
    return None


def cityscapes(
    root,
    split="train",
    *,
    annotations="gtFine",
    label_map=None,
    ignore_label=255,
    num_classes=None,
    class_names=None,
):
    """Cityscapes semantic segmentation source (19 classes).

    Args:
        root: folder holding `leftImg8bit/` and `gtFine/`.
        split: "train", "val" or "test" (test labels are all ignore).
        annotations: "gtFine" or "gtCoarse".
        label_map: replaces the label-id -> train-id mapping (dict or 256 entries).
        ignore_label: label of the ignored ids.
        num_classes, class_names: must be 19 / the 19 names, unless `label_map` relabels.

    Example:
        >>> data = cityscapes("/data/cityscapes", "val")  # doctest: +SKIP
    """
    found = find_cityscapes_root(root)
    if found is None:
        raise DataError(f"{root}: not a Cityscapes folder (no leftImg8bit/).")
    num_classes, class_names = fixed_classes(
        f"cityscapes:{split}", CITYSCAPES_CLASSES, num_classes, class_names, label_map
    )
    image_dir = found / "leftImg8bit" / split
    mask_dir = found / annotations / split
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            available = sorted(p.name for p in folder.parent.glob("*") if p.is_dir())
            raise DataError(
                f"Cityscapes folder {folder} not found; splits there: {', '.join(available) or 'none'}."
            )
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"{image_dir}: no <city>/*_leftImg8bit.png images.")

    def mask_path(image, kind):
        stem = image.name[: -len("_leftImg8bit.png")]
        return mask_dir / image.parent.name / f"{stem}_{annotations}_{kind}.png"

    kind = "labelIds"
    if not mask_path(images[0], kind).is_file() and mask_path(images[0], "labelTrainIds").is_file():
        kind = "labelTrainIds"
    missing = [str(i) for i in images if not mask_path(i, kind).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} Cityscapes images have no {annotations}_{kind}.png mask in "
            f"{mask_dir}: {listed(missing)}."
        )
    base = cityscapes_lut(ignore_label) if kind == "labelIds" and label_map is None else None
    return file_source(
        [(i, mask_path(i, kind)) for i in images],
        num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        name=f"cityscapes:{split}",
        label_lut=label_lut(label_map, base=base),
    )
