"""The data contract: `SegmentationData` (what every source returns) and `DataError`.

A *source* is a `SegmentationData`: an unbatched `tf.data.Dataset` of `(image uint8 [H, W, 3]
RGB, mask uint8 [H, W])` plus its metadata. File-based sources also keep their file list and
an undecoded `records` dataset (path pairs) with a `decode` function, so pipelines shuffle and
skip cheap path records and decode in parallel afterwards (`tf.data.AUTOTUNE`).

Errors about data are `DataError` (a `ValueError`) naming the file and the fix; `listed` and
`short` keep the file and value lists in those messages short.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

MAX_LISTED = 10


class DataError(ValueError):
    """Bad or inconsistent dataset input; the message names the file(s) and the fix."""


def listed(items, limit=MAX_LISTED):
    """`"a, b, ... (3 more)"`: at most `limit` items of a list for a message."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def short(values, limit=8):
    """`"[1, 2, ...]"`: at most `limit` integer values for a message."""
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:limit]))
    return f"[{text}{', ...' if len(values) > limit else ''}]"


@dataclasses.dataclass(eq=False)
class SegmentationData:
    """A segmentation data source (the contract between data and training).

    Attributes:
        dataset: unbatched `tf.data.Dataset` of `(image uint8 [H, W, 3] RGB, mask uint8 [H, W])`;
            sizes may differ between examples. Mask values are in `[0, num_classes)` or
            `ignore_label`.
        num_classes: number of classes (labels `0 .. num_classes - 1`).
        ignore_label: label of pixels excluded from loss and metrics (255 default).
        class_names: one name per class (generated `class_<i>` when not given).
        num_examples: number of examples, or None when unknown.
        name: short description used in messages and logs.
        files: `((image_path, mask_path), ...)` for file-based sources, else None.
        records: optional undecoded dataset (e.g. path pairs); `dataset` equals
            `records.map(decode)`. Pipelines shuffle / skip records before decoding.
        decode: function `(*record) -> (image, mask)` for `records`.
        label_lut: the 256-entry uint8 raw-value -> label table of file sources.
        skipped: `((path, reason), ...)` left out by `validate(..., skip_bad=True)`.

    Example:
        >>> data = SegmentationData(dataset, num_classes=3)  # doctest: +SKIP
    """

    dataset: tf.data.Dataset
    num_classes: int
    ignore_label: int = 255
    class_names: tuple | None = None
    num_examples: int | None = None
    name: str = "data"
    files: tuple | None = None
    records: tf.data.Dataset | None = None
    decode: Callable | None = None
    label_lut: np.ndarray | None = None
    skipped: tuple = ()

    def __post_init__(self):
        if not isinstance(self.num_classes, (int, np.integer)) or not 1 <= self.num_classes <= 256:
            raise DataError(
                f"{self.name}: num_classes must be an int in 1..256; got {self.num_classes!r}."
            )
        self.num_classes = int(self.num_classes)
        if not 0 <= int(self.ignore_label) <= 255:
            raise DataError(
                f"{self.name}: ignore_label must be in 0..255 (masks are uint8); got {self.ignore_label}."
            )
        if self.ignore_label < self.num_classes:
            raise DataError(
                f"{self.name}: ignore_label {self.ignore_label} is also a class label "
                f"(num_classes={self.num_classes}); use an ignore label >= num_classes (255)."
            )
        if self.class_names is None:
            self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
        self.class_names = tuple(str(n) for n in self.class_names)
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class_names for num_classes={self.num_classes}."
            )
        if (self.records is None) != (self.decode is None):
            raise DataError(f"{self.name}: give both `records` and `decode`, or neither.")

    @classmethod
    def from_records(cls, records, decode, **fields):
        """A source whose `dataset` is `records` decoded in parallel (order kept).

        Example:
            >>> SegmentationData.from_records(paths, decode, num_classes=3)  # doctest: +SKIP
        """
        return cls(dataset=_decoded(records, decode), records=records, decode=decode, **fields)

    def with_records(self, records, **changes):
        """The same source over other undecoded `records` (e.g. a subset), decoded alike."""
        if self.decode is None:
            raise DataError(f"{self.name}: has no undecoded records to replace.")
        return dataclasses.replace(
            self, dataset=_decoded(records, self.decode), records=records, **changes
        )

    def with_files(self, files):
        """The same file source restricted to `files` (a subset of `self.files`)."""
        if self.files is None:
            raise DataError(f"{self.name}: not a file-based source.")
        files = tuple((str(i), str(m)) for i, m in files)
        unknown = set(files) - set(self.files)
        if unknown or not files:
            raise DataError(
                f"{self.name}: with_files needs a non-empty subset of the source's files; "
                f"not among them: {listed(sorted(unknown))}."
            )
        records = tf.data.Dataset.from_tensor_slices(([i for i, _ in files], [m for _, m in files]))
        return self.with_records(records, files=files, num_examples=len(files), skipped=())


def _decoded(records, decode):
    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
