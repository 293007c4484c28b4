"""ADE20K SceneParsing (ADEChallengeData2016) reader: 150 classes, label 0 ("other") ignored.

Layout: `images/{training,validation}/*.jpg` + `annotations/{training,validation}/*.png`.
The official DeepLab ADE20K setup keeps 151 labels with 0 as its ignore label; here label 0
maps to `ignore_label` and labels 1..150 shift to 0..149 (so `num_classes=150` and the usual
ignore value 255).
"""

from pathlib import Path

import numpy as np

from keras_deeplab.data.contract import DataError
from keras_deeplab.data.decode import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from keras_deeplab.data.files import file_source, list_files, pair_by_stem
from keras_deeplab.data.labels import fixed_classes, label_lut
from keras_deeplab.data.palette import ADE20K_CLASSES

SPLITS = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
}


def ade20k_lut(ignore_label=255):
    """256-entry table: 0 -> ignore_label, v -> v - 1 (values > 150 stay out of range)."""
    table = np.arange(-1, 255, dtype=np.int64)
    table[0] = ignore_label
    return table.astype(np.uint8)


def find_ade20k_root(root):
    root = Path(root)
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images" / "training").is_dir() or (
            candidate / "images" / "validation"
        ).is_dir():
            if (candidate / "annotations").is_dir():
                return candidate
    return None


def _class_names(root):
    """Names from `objectInfo150.txt`/`.csv` when present (first name of each row)."""
    for name in ("objectInfo150.txt", "objectInfo150.csv"):
        path = root / name
        if path.is_file():
            rows = path.read_text().splitlines()[1:]
            sep = "\t" if name.endswith(".txt") else ","
            names = [row.split(sep)[-1].split(";")[0].strip().strip('"') for row in rows if row]
            if len(names) == 150:
                return tuple(names)
    return ADE20K_CLASSES


def ade20k(
    root, split="train", *, label_map=None, ignore_label=255, num_classes=None, class_names=None
):
    """ADE20K source (150 classes).

    Args:
        root: `ADEChallengeData2016/` or its parent.
        split: "train"/"training" or "val"/"validation".
        label_map: replaces the 0 -> ignore, v -> v - 1 mapping (dict or 256 entries).
        ignore_label: label of raw 0 ("other").
        num_classes, class_names: must be 150 / 150 names, unless `label_map` relabels.

    Example:
        >>> data = ade20k("/data/ADEChallengeData2016", "val")  # doctest: +SKIP
    """
    found = find_ade20k_root(root)
    if found is None:
        raise DataError(
            f"{root}: not an ADE20K folder (expected images/training/ and annotations/training/ "
            "as in ADEChallengeData2016)."
        )
    if split not in SPLITS:
        raise DataError(f"ADE20K split must be one of {sorted(SPLITS)}; got {split!r}.")
    image_dir = found / "images" / SPLITS[split]
    mask_dir = found / "annotations" / SPLITS[split]
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"ADE20K folder {folder} not found.")
    images = list_files(image_dir, IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{image_dir}: no images.")
    files = pair_by_stem(
        images, list_files(mask_dir, MASK_EXTENSIONS), image_dir, mask_dir, "ADE20K", ""
    )
    num_classes, class_names = fixed_classes(
        f"ade20k:{SPLITS[split]}", _class_names(found), num_classes, class_names, label_map
    )
    base = ade20k_lut(ignore_label) if label_map is None else None
    return file_source(
        files,
        num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        name=f"ade20k:{SPLITS[split]}",
        label_lut=label_lut(label_map, base=base),
    )
