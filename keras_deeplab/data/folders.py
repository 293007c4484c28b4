"""Paired image/mask folders, CamVid, and `from_directory` layout detection.

`paired_folders` pairs the files of an image folder and a mask folder by their path without
extension (optionally a mask suffix such as `_mask`). `from_directory(path, split)` detects
the layout of `path`:

1. ADE20K (`images/training/` + `annotations/training/`, or `ADEChallengeData2016/`),
2. Cityscapes (`leftImg8bit/`),
3. PASCAL VOC (`JPEGImages/` + `SegmentationClass[Aug]/`, split lists in
   `ImageSets/Segmentation/`),
4. SegNet / CamVid (`<split>/` + `<split>annot/`),
5. `images/` + `masks/` (also named image/img/imgs and mask/labels/label/annotations/annot/gt),
   per split as `images/<split>/` + `masks/<split>/` or `<split>/images/` + `<split>/masks/`,
   or without splits (every pair is used, with a warning when a split was asked for).

Paired layouts take their defaults from a `classes.txt` (one name per line) in `path`, else
from CamVid's conventions when the folder name contains "camvid" (11 classes, void label
11 -> ignore). An explicit `num_classes=`, `class_names=`, `label_map=` or `ignore_label=`
overrides only itself: `from_directory(camvid_root, "val", num_classes=11)` keeps the void ->
ignore label map and the class names, and a `num_classes` contradicting the layout's class
names is one `DataError` naming both counts.
"""

import inspect
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from keras_deeplab.data.ade20k import ade20k, find_ade20k_root
from keras_deeplab.data.cityscapes import cityscapes, find_cityscapes_root
from keras_deeplab.data.contract import DataError
from keras_deeplab.data.decode import IMAGE_EXTENSIONS, MASK_EXTENSIONS, mask_from_pil
from keras_deeplab.data.files import file_source, list_files, pair_by_stem
from keras_deeplab.data.labels import label_lut
from keras_deeplab.data.palette import CAMVID_CLASSES
from keras_deeplab.data.validation import validate as validate_data
from keras_deeplab.data.voc import find_voc_root, voc

IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "annotation", "annot", "gt")
CLASS_FILES = ("classes.txt", "class_names.txt")
CAMVID = {"num_classes": 11, "label_map": {11: 255}, "class_names": CAMVID_CLASSES}


def _sample_values(masks, limit=8):
    values = set()
    for path in masks[:limit]:
        try:
            with Image.open(path) as img:
                values.update(np.unique(mask_from_pil(img, path)).tolist())
        except Exception:  # only for a hint in an error message
            continue
    return sorted(values)


def paired_folders(
    images_dir,
    masks_dir,
    num_classes=None,
    *,
    class_names=None,
    label_map=None,
    mask_threshold=None,
    ignore_label=255,
    mask_suffix=None,
    name=None,
):
    """Images and masks in two folders, matched by file name (subfolders included).

    Args:
        images_dir: folder of RGB / grayscale images (JPEG, PNG, BMP, GIF, WebP, TIFF).
        masks_dir: folder of index masks (PNG, BMP, GIF, TIFF; 'L' or palette 'P').
        num_classes: number of classes (default: `len(class_names)`).
        class_names: optional names, one per class.
        label_map: dict `{raw: label}` or 256 labels applied to raw mask values, e.g.
            `{11: 255}` to ignore CamVid's void label.
        mask_threshold: binary masks such as 0/255: raw `v > mask_threshold` -> 1, else 0.
        ignore_label: label excluded from the loss (255).
        mask_suffix: end of the mask stems (`"_mask"` for `a.jpg` + `a_mask.png`); None detects
            "" or a common suffix.
        name: name used in messages.

    Example:
        >>> data = paired_folders("camvid/train", "camvid/trainannot", 11,
        ...                       label_map={11: 255})  # doctest: +SKIP
        >>> data = paired_folders("isbi/image", "isbi/label", 2, mask_threshold=127)  # doctest: +SKIP
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    name = name or f"folders:{images_dir.name}"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{name}: folder {folder} not found.")
    images = list_files(images_dir, IMAGE_EXTENSIONS)
    masks = list_files(masks_dir, MASK_EXTENSIONS)
    if not images:
        raise DataError(
            f"{images_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)}, subfolders included)."
        )
    if not masks:
        raise DataError(f"{masks_dir}: no masks (looked for {', '.join(MASK_EXTENSIONS)}).")
    if num_classes is None:
        if class_names is None:
            values = _sample_values(masks)
            raise DataError(
                f"{name}: pass num_classes= (or class_names=). Mask values seen in {masks_dir}: "
                f"{values[:20]}{' ...' if len(values) > 20 else ''}. Examples: CamVid "
                "num_classes=11, label_map={11: 255}; binary 0/255 masks num_classes=2, "
                "mask_threshold=127."
            )
        num_classes = len(class_names)
    files = pair_by_stem(images, masks, images_dir, masks_dir, name, mask_suffix)
    if label_map is None and mask_threshold is None and ignore_label == 255:
        values = set(_sample_values([m for _, m in files], limit=4))
        if values == {0, 255}:
            warnings.warn(
                f"{name}: masks hold 0/255 values and 255 is the ignore label; for binary "
                "masks pass mask_threshold=127 (255 -> class 1).",
                stacklevel=2,
            )
    return file_source(
        files,
        num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        name=name,
        label_lut=label_lut(label_map, mask_threshold),
    )


def camvid(root, split="train", **kwargs):
    """CamVid in the SegNet layout (`<split>/` + `<split>annot/`): 11 classes, void 11 -> ignore.

    Keyword arguments are those of `paired_folders`; each overrides only its own CamVid
    default (e.g. `ignore_label=254` maps void to 254).

    Example:
        >>> data = camvid("CamVid", "val")  # doctest: +SKIP
    """
    root = Path(root)
    options = _merge_defaults(CAMVID, kwargs, f"camvid:{split}", "CamVid")
    return paired_folders(root / split, root / f"{split}annot", name=f"camvid:{split}", **options)


def _split_layouts(root, split):
    """Candidate `(images_dir, masks_dir)` pairs for `split`."""
    pairs = [(root / split, root / f"{split}annot")]
    for image_name in IMAGE_DIRS:
        for mask_name in MASK_DIRS:
            pairs.append((root / image_name / split, root / mask_name / split))
            pairs.append((root / split / image_name, root / split / mask_name))
    return pairs


def _available_splits(root):
    splits = {p.name[: -len("annot")] for p in root.glob("*annot") if p.is_dir()}
    splits = {s for s in splits if (root / s).is_dir()}
    for image_name in IMAGE_DIRS:
        splits.update(p.name for p in (root / image_name).glob("*") if p.is_dir())
    for child in root.iterdir():
        if child.is_dir() and any((child / n).is_dir() for n in IMAGE_DIRS):
            splits.add(child.name)
    return sorted(splits)


def _paired_layout(root, split):
    """`(images_dir, masks_dir, uses_split)` or None."""
    if split is not None:
        for images_dir, masks_dir in _split_layouts(root, split):
            if images_dir.is_dir() and masks_dir.is_dir():
                return images_dir, masks_dir, True
    for image_name in IMAGE_DIRS:
        for mask_name in MASK_DIRS:
            images_dir, masks_dir = root / image_name, root / mask_name
            if images_dir.is_dir() and masks_dir.is_dir():
                return images_dir, masks_dir, False
    return None


def _merge_defaults(defaults, kwargs, where, origin):
    """`kwargs` over a layout's `defaults`: each explicit value overrides only itself.

    The layout's class names stay when the explicit `num_classes` agrees with them; a
    `num_classes` contradicting them is a `DataError` naming both counts. A default label
    map sending a void value to 255 follows an explicit `ignore_label`.
    """
    options = dict(kwargs)
    names = defaults.get("class_names")
    if names is not None and options.get("class_names") is None:
        wanted = options.get("num_classes")
        if wanted is not None and wanted != len(names):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise DataError(
                f"{where}: num_classes={wanted} but {origin} defines {len(names)} classes "
                f"({shown}); fix: pass num_classes={len(names)} (CLI: --num-classes "
                f"{len(names)}) or leave it out, or for {wanted} classes of your own also pass "
                f"class_names= with {wanted} names."
            )
        options["class_names"] = names
        options["num_classes"] = len(names)
    elif "num_classes" in defaults and options.get("num_classes") is None:
        if options.get("class_names") is None:
            options["num_classes"] = defaults["num_classes"]
    if "label_map" in defaults and "label_map" not in options:
        ignore = options.get("ignore_label", 255)
        options["label_map"] = {
            raw: (ignore if label == 255 else label) for raw, label in defaults["label_map"].items()
        }
    for key, value in defaults.items():
        if key not in ("class_names", "num_classes", "label_map"):
            options.setdefault(key, value)
    return options


def _layout_defaults(root):
    """`(defaults, origin)`: a class-name file in `root`, else CamVid's conventions, else none."""
    for name in CLASS_FILES:
        path = root / name
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise DataError(f"{path} is empty; list one class name per line.")
            return {"class_names": tuple(names)}, str(path)
    if "camvid" in root.name.lower():
        return CAMVID, f"CamVid (folder name {root.name!r})"
    return {}, None


def _paired_defaults(root, kwargs, where):
    defaults, origin = _layout_defaults(root)
    return _merge_defaults(defaults, kwargs, where, origin) if defaults else dict(kwargs)


def _reader_parameters(function, skip=()):
    return [
        name
        for name, p in inspect.signature(function).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _directory_readers():
    """`{layout: (reader, its options)}` of the readers `from_directory` dispatches to."""
    return {
        "ADE20K": (ade20k, _reader_parameters(ade20k, ("root", "split"))),
        "Cityscapes": (cityscapes, _reader_parameters(cityscapes, ("root", "split"))),
        "PASCAL VOC": (voc, _reader_parameters(voc, ("root", "split"))),
        "paired folders": (
            paired_folders,
            _reader_parameters(paired_folders, ("images_dir", "masks_dir")),
        ),
    }


# Options of `load_data` itself, accepted by every source.
LOAD_OPTIONS = ("validate", "skip_bad")


def reader_options(source):
    """Keyword options a data source accepts (`load_data` / a config's `data.options`).

    Args:
        source: `"shapes"`, `"tfds"` or `"directory"` (the union over the layouts).

    Example:
        >>> "label_map" in reader_options("directory")
        True
    """
    if source == "shapes":
        from keras_deeplab.data.shapes import shapes

        names = _reader_parameters(shapes, ("split",))
    elif source == "tfds":
        from keras_deeplab.data.tfds import tfds_dataset

        names = _reader_parameters(tfds_dataset, ("name", "split"))
    elif source == "directory":
        names = [n for _, options in _directory_readers().values() for n in options]
    else:
        raise ValueError(f"unknown data source {source!r}; expected shapes, tfds or directory.")
    return tuple(sorted(set(names) | set(LOAD_OPTIONS)))


def _check_options(kwargs, accepted, where):
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DataError(
            f"{where} does not take the option(s) {', '.join(unknown)}; it takes: "
            f"{', '.join(sorted(accepted))}. Fix: drop them (options of another data source?)."
        )


def from_directory(path, split="train", **kwargs):
    """Detect the dataset layout of `path` and return its `SegmentationData`.

    Args:
        path: dataset folder (see the module docstring for the layouts).
        split: split name ("train", "val", ...); None uses every pair of split-less layouts.
        **kwargs: passed to the reader (`voc`, `cityscapes`, `ade20k` or `paired_folders`),
            e.g. `num_classes=`, `label_map=`, `mask_threshold=`, `aug=True` (VOC).

    Example:
        >>> data = from_directory("/data/VOCdevkit", "val")  # doctest: +SKIP
        >>> data = from_directory("/data/isbi", None, num_classes=2, mask_threshold=127)  # doctest: +SKIP
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found.")
    readers = _directory_readers()

    def read(layout, *args):
        reader, accepted = readers[layout]
        _check_options(kwargs, accepted, f"{root} ({layout} layout)")
        return reader(*args, **kwargs)

    if find_ade20k_root(root) is not None:
        return read("ADE20K", root, "train" if split is None else split)
    if find_cityscapes_root(root) is not None:
        return read("Cityscapes", root, "train" if split is None else split)
    voc_root = find_voc_root(root)
    if voc_root is not None and any(
        (voc_root / d).is_dir() for d in ("SegmentationClass", "SegmentationClassAug")
    ):
        return read("PASCAL VOC", voc_root, split)
    layout = _paired_layout(root, split)
    if layout is None:
        available = _available_splits(root)
        if available:
            raise DataError(
                f"{root}: split {split!r} not found; available splits: {', '.join(available)}."
            )
        raise DataError(
            f"{root}: unknown dataset layout. Expected one of: VOC (JPEGImages/ + "
            "SegmentationClass/), Cityscapes (leftImg8bit/ + gtFine/), ADE20K (images/training/ + "
            "annotations/training/), <split>/ + <split>annot/, or images/ + masks/ (optionally "
            "per split). Or call paired_folders(images_dir, masks_dir, num_classes) directly."
        )
    images_dir, masks_dir, uses_split = layout
    if split is not None and not uses_split:
        splits = [s for s in _available_splits(root) if s != split]
        if splits:
            raise DataError(
                f"{root}: split {split!r} not found; available splits: {', '.join(splits)}."
            )
        warnings.warn(
            f"{root} has no split folders: using every pair of {images_dir.name}/ + "
            f"{masks_dir.name}/ for split {split!r}.",
            stacklevel=2,
        )
    _check_options(kwargs, readers["paired folders"][1], f"{root} (paired-folder layout)")
    name = kwargs.get("name") or f"{root.name}:{split if uses_split else 'all'}"
    options = _paired_defaults(root, kwargs, name)
    options.pop("name", None)
    return paired_folders(images_dir, masks_dir, name=name, **options)


def load_data(source, split="train", *, validate=None, skip_bad=False, **kwargs):
    """One entry point for configs and the CLI.

    `source` is `"shapes"` (the synthetic set), `"tfds:<name>"` (a TFDS dataset) or a folder
    (`from_directory`). `kwargs` go to the reader.

    Folder sources are scanned before they are returned (`validate(data, decode_images=True)`,
    with a progress bar): every image is decoded with the pipeline's decoder and every mask
    checked, so a bad file is reported up front, with its path and the fix, and never
    crashes a training epoch.

    Args:
        source: `"shapes"`, `"tfds:<name>"` or a dataset folder.
        split: split name.
        validate: scan the examples first; None (default) scans folder sources only.
        skip_bad: leave bad examples out (counted and listed in a warning, and in the
            returned data's `skipped`) instead of raising `DataError`.
        **kwargs: passed to the reader (`num_classes=`, `label_map=`, ...).
    """
    source = str(source)
    if source == "shapes":
        from keras_deeplab.data.shapes import shapes

        _check_options(kwargs, reader_options("shapes"), "the shapes source")
        data = shapes(split, **kwargs)
    elif source.startswith("tfds:"):
        from keras_deeplab.data.tfds import tfds_dataset

        _check_options(kwargs, reader_options("tfds"), f"the TFDS source {source}")
        data = tfds_dataset(source[len("tfds:") :], split, **kwargs)
    else:
        data = from_directory(source, split, **kwargs)
        if validate is None:
            validate = True
    if validate or skip_bad:
        data = validate_data(data, skip_bad=skip_bad, decode_images=True)
    return data


__all__ = [
    "camvid",
    "file_source",
    "from_directory",
    "load_data",
    "paired_folders",
    "reader_options",
]
