"""Class names, colour palettes and mask colouring.

`voc_palette` is the PASCAL VOC colour map (bit-interleaved; index 255, the
ignore label, is (224, 224, 192)), the palette of VOC `SegmentationClass/` PNGs
and of the official `research/deeplab/utils/get_dataset_colormap.py`.
"""

import numpy as np

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# The 19 Cityscapes train ids (cityscapesScripts `labels.py`), in train-id order.
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

CITYSCAPES_COLORS = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# CamVid (SegNet version): labels 0..10; 11 is "Unlabelled"/void (ignored).
CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "signsymbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)

# ADE20K SceneParsing (ADEChallengeData2016) classes 1..150, short names of `objectInfo150`.
ADE20K_CLASSES = tuple(
    """wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|
    earth|door|table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|
    rug|field|armchair|seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|
    signboard|chest of drawers|counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|path|
    stairs|runway|case|pool table|pillow|screen door|stairway|river|bridge|bookcase|blind|
    coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|kitchen island|computer|
    swivel chair|boat|bar|arcade machine|hovel|bus|towel|light|truck|tower|chandelier|awning|
    streetlight|booth|television receiver|airplane|dirt track|apparel|pole|land|bannister|
    escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt|canopy|washer|
    plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|ball|food|
    step|tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|
    hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt screen|plate|monitor|bulletin board|
    shower|radiator|glass|clock|flag""".replace("\n", "").split("|")
)
ADE20K_CLASSES = tuple(name.strip() for name in ADE20K_CLASSES)


def voc_palette(num_colors=256):
    """PASCAL VOC colour map as a uint8 array `[num_colors, 3]`."""
    index = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            palette[:, channel] |= ((index >> channel) & 1) << shift
        index = index >> 3
    return palette.astype(np.uint8)


def cityscapes_palette():
    """Cityscapes train-id colours, 256 entries (ids >= 19 black)."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    return palette


def colorize(mask, palette=None):
    """Label map `[..., H, W]` (ints 0..255) -> RGB uint8 `[..., H, W, 3]` (VOC colours by default)."""
    palette = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= len(palette)):
        raise ValueError(
            f"colorize: label values must be in [0, {len(palette)}); got {mask.min()}..{mask.max()}."
        )
    return palette[mask.astype(np.int64)]


def overlay(image, mask, alpha=0.5, palette=None, ignore_label=255):
    """Blend the colourised `mask` over the RGB `image` (uint8); ignore pixels stay unblended."""
    image = np.asarray(image, np.float32)
    colors = colorize(mask, palette).astype(np.float32)
    keep = (np.asarray(mask) == ignore_label)[..., None]
    blended = np.where(keep, image, (1 - alpha) * image + alpha * colors)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def colors_to_labels(rgb_mask, palette=None):
    """Colour-coded RGB mask `[H, W, 3]` -> label map `[H, W]` uint8 by exact palette match.

    Entry `i` of `palette` (VOC colours by default) is the colour of label `i`. A colour found
    in no entry raises `ValueError` listing it.
    """
    palette = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    rgb = np.asarray(rgb_mask, np.uint8)[..., :3]
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8)
    keys = keys | palette[:, 2]
    lookup = {}
    for label in range(len(keys) - 1, -1, -1):  # first entry wins for duplicate colours
        lookup[int(keys[label])] = label
    values, inverse = np.unique(code, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in lookup]
    if unknown:
        shown = ", ".join(str(((v >> 16) & 255, (v >> 8) & 255, v & 255)) for v in unknown[:5])
        raise ValueError(f"colors_to_labels: colours not in the palette: {shown}.")
    labels = np.array([lookup[int(v)] for v in values], np.uint8)
    return labels[inverse].reshape(rgb.shape[:2])
