"""Label tables: raw mask values -> class labels, and checks of label values.

Raw mask values go through a 256-entry lookup table (`label_lut`: threshold, label map,
dataset conventions such as Cityscapes label ids -> train ids); the result must lie in
`[0, num_classes)` or be `ignore_label` (`bad_label_values`, `mask_fix_hint`).
`fixed_classes` reconciles a user's `num_classes` / `class_names` with a dataset's fixed
class list.
"""

import numpy as np

from keras_deeplab.data.contract import DataError


def label_lut(label_map=None, mask_threshold=None, base=None):
    """256-entry uint8 table: raw mask value -> label.

    Args:
        label_map: dict `{raw: label}` (other values unchanged), or a length-256 sequence
            (entry `v` = label of raw value `v`). Applied after `mask_threshold` / `base`.
        mask_threshold: binary masks: raw `v > mask_threshold` -> 1, else 0.
        base: table applied first (a dataset's convention, e.g. Cityscapes ids -> train ids).

    Example:
        >>> lut = label_lut({255: 0})  # raw 255 -> label 0, the rest unchanged
        >>> int(lut[255]), int(lut[3])
        (0, 3)
    """
    table = np.arange(256, dtype=np.int64) if base is None else np.asarray(base, np.int64)
    if table.shape != (256,):
        raise DataError(f"label table must have 256 entries; got shape {table.shape}.")
    if mask_threshold is not None:
        if not 0 <= float(mask_threshold) < 255:
            raise DataError(f"mask_threshold must be in [0, 255); got {mask_threshold}.")
        table = (table > mask_threshold).astype(np.int64)
    if label_map is not None:
        if isinstance(label_map, dict):
            mapped = table.copy()
            for raw, label in label_map.items():
                if not (0 <= int(raw) <= 255 and 0 <= int(label) <= 255):
                    raise DataError(
                        f"label_map entries must map 0..255 to 0..255; got {raw!r}: {label!r}."
                    )
                mapped[table == int(raw)] = int(label)
            table = mapped
        else:
            values = np.asarray(label_map, np.int64)
            if values.shape != (256,) or values.min() < 0 or values.max() > 255:
                raise DataError(
                    "label_map must be a dict {raw: label} or 256 labels in 0..255 "
                    f"(got shape {values.shape})."
                )
            table = values[table]
    return table.astype(np.uint8)


def bad_label_values(labels, num_classes, ignore_label):
    """Sorted unique values of `labels` outside `[0, num_classes)` and != ignore_label."""
    values = np.unique(labels)
    return values[(values >= num_classes) & (values != ignore_label)]


def mask_fix_hint(num_classes, ignore_label, raw_values):
    """The fix for out-of-range mask values (binary 0/255 masks get their own hint)."""
    raw = np.asarray(raw_values)
    hints = [
        f"pass the right num_classes (now {num_classes}) or a label_map "
        f"{{raw: label}} sending those values into [0, {num_classes}) or to {ignore_label} (ignore)"
    ]
    if raw.size and set(raw.tolist()) <= {0, 1, 255} and 255 in raw:
        hints.append("binary 0/255 masks: pass mask_threshold=127 and num_classes=2")
    return "; or ".join(hints)


def fixed_classes(where, names, num_classes=None, class_names=None, label_map=None):
    """`(num_classes, class_names)` of a dataset with a fixed class list `names`.

    An explicit `num_classes` / `class_names` must agree with `names` unless the caller
    relabels the masks with its own `label_map`; otherwise it is a `DataError` naming both
    counts.
    """
    if label_map is not None:
        if class_names is not None:
            return num_classes or len(class_names), class_names
        num_classes = num_classes or len(names)
        return num_classes, names if num_classes == len(names) else None
    wanted = len(class_names) if class_names is not None else num_classes
    if wanted is not None and wanted != len(names):
        raise DataError(
            f"{where}: num_classes={wanted} but the dataset has {len(names)} classes; fix: "
            f"pass num_classes={len(names)} (CLI: --num-classes {len(names)}) or leave it out, "
            "or relabel the masks with a label_map."
        )
    return len(names), tuple(class_names) if class_names is not None else names
