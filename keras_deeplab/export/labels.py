"""Class names written beside every export: one name per line, line i = class i.

Example:

```python
from keras_deeplab.export.labels import resolve_labels

resolve_labels(None, 21)[15]  # 'person' (PASCAL VOC names for 21 classes)
resolve_labels(None, 2)  # ['class_0', 'class_1']
resolve_labels("labels.txt", 3)  # the file's three lines
```
"""

import os
from pathlib import Path

from keras_deeplab.data.palette import VOC_CLASSES

VOC_LABELS = tuple(VOC_CLASSES)


def default_labels(num_classes):
    """PASCAL VOC names for 21 classes, `class_<i>` otherwise."""
    if num_classes == len(VOC_LABELS):
        return list(VOC_LABELS)
    return [f"class_{i}" for i in range(num_classes)]


def resolve_labels(labels, num_classes):
    """`num_classes` class names from a list, a text file (one per line) or None (defaults)."""
    if labels is None:
        return default_labels(num_classes)
    if isinstance(labels, str | os.PathLike):
        source = Path(labels)
        if not source.is_file():
            raise ValueError(f"labels file {source} does not exist (one class name per line).")
        labels = source.read_text().splitlines()
    labels = [str(label).strip() for label in labels]
    if len(labels) != num_classes or any(not label or "\n" in label for label in labels):
        raise ValueError(
            f"labels must be {num_classes} non-empty class names, one line each (one per "
            f"model output channel); got {len(labels)}."
        )
    return labels


def labels_text(labels):
    """The labels file's content."""
    return "\n".join(labels) + "\n"


def labels_path_for(path):
    """`<stem>.labels.txt` beside a `.tflite` file."""
    path = Path(path)
    return path.with_name(f"{path.stem}.labels.txt")
