"""PASCAL VOC 2012 layout reader (as used by the official `research/deeplab/datasets/`).

Layout (`root` may be `VOCdevkit/`, `VOCdevkit/VOC2012/` or any folder with these):
`JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNGs: the palette *indices* are
the labels, 255 = boundary / ignore), `SegmentationClassAug/<id>.png` (grayscale index PNGs
of the augmented set, Hariharan et al.) and `ImageSets/Segmentation/<split>.txt` (one id per
line, or `"/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"` pairs).
"""

import warnings
from pathlib import Path

from keras_deeplab.data.contract import DataError, listed
from keras_deeplab.data.decode import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from keras_deeplab.data.files import file_source
from keras_deeplab.data.labels import label_lut
from keras_deeplab.data.palette import VOC_CLASSES

AUG_SPLITS = ("train_aug", "trainaug")


def find_voc_root(root):
    """The folder holding `JPEGImages/` under `root` (itself, `VOC2012/`, `VOCdevkit/VOC2012/`)."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def _stems(folder, extensions):
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions}


def _split_file(root, split):
    folder = root / "ImageSets" / "Segmentation"
    names = AUG_SPLITS if split in AUG_SPLITS else (split,)
    for name in names:
        path = folder / f"{name}.txt"
        if path.is_file():
            return path
    available = sorted(p.stem for p in folder.glob("*.txt"))
    raise DataError(
        f"VOC split file {folder / (names[0] + '.txt')} not found; available splits: "
        f"{', '.join(available) or 'none'}. Pass one of them as split=..."
    )


def voc(
    root,
    split="train",
    aug=False,
    *,
    num_classes=None,
    class_names=None,
    label_map=None,
    ignore_label=255,
):
    """PASCAL VOC segmentation source.

    Args:
        root: VOC folder (see module docstring).
        split: name of `ImageSets/Segmentation/<split>.txt` ("train", "val", "trainval",
            "train_aug"/"trainaug"); None uses every mask of the mask folder. A folder without
            `ImageSets/Segmentation/` also uses every mask (with a warning).
        aug: read masks from `SegmentationClassAug/` (implied by the train_aug split).
        num_classes / class_names / label_map / ignore_label: as `paired_folders` (default:
            the 21 VOC classes and their names).

    Example:
        >>> data = voc("/data/VOCdevkit", "val")  # doctest: +SKIP
    """
    found = find_voc_root(root)
    if found is None:
        raise DataError(
            f"{root}: not a PASCAL VOC folder (no JPEGImages/ in it, VOC2012/ or VOCdevkit/VOC2012/)."
        )
    root = found
    aug = aug or split in AUG_SPLITS
    mask_dir = root / ("SegmentationClassAug" if aug else "SegmentationClass")
    if not mask_dir.is_dir():
        fix = (
            "download SegmentationClassAug (the augmented masks) into it, or use aug=False"
            if aug
            else "masks belong in SegmentationClass/"
        )
        raise DataError(f"{mask_dir} not found; {fix}.")
    images = _stems(root / "JPEGImages", IMAGE_EXTENSIONS)
    masks = _stems(mask_dir, MASK_EXTENSIONS)
    sets = root / "ImageSets" / "Segmentation"
    if split is not None and not sets.is_dir():
        warnings.warn(
            f"{root} has no ImageSets/Segmentation/: using all {len(masks)} masks of "
            f"{mask_dir.name}/ for split {split!r}.",
            stacklevel=2,
        )
        split = None
    if split is None:
        ids = sorted(masks)
        source = f"{mask_dir}"
    else:
        path = _split_file(root, split)
        ids = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts:
                ids.append(Path(parts[0]).stem)
        if not ids:
            raise DataError(f"VOC split file {path} is empty; list one image id per line.")
        source = str(path)
    no_image = [i for i in ids if i not in images]
    no_mask = [i for i in ids if i not in masks]
    if no_image or no_mask:
        parts = []
        if no_image:
            parts.append(
                f"{len(no_image)} without an image in {root / 'JPEGImages'}: {listed(no_image)}"
            )
        if no_mask:
            parts.append(f"{len(no_mask)} without a mask in {mask_dir}: {listed(no_mask)}")
        raise DataError(
            f"{source}: ids {'; '.join(parts)}. Fix: restore the files or remove the ids."
        )
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else len(VOC_CLASSES)
    if class_names is None and num_classes == len(VOC_CLASSES):
        class_names = VOC_CLASSES
    return file_source(
        [(images[i], masks[i]) for i in ids],
        num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        name=f"voc:{split or 'all'}{' (aug)' if aug else ''}",
        label_lut=label_lut(label_map),
    )
