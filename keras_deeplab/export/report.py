"""Verification reports shared by the SavedModel and TFLite exporters.

Every export is checked against the Keras model it came from; the result is a plain,
JSON-serialisable dict. A failed check raises `VerificationError`, which carries that dict
(`error.report`) so callers (e.g. the CLI) can still write it and exit non-zero.
"""

import json
import os
from pathlib import Path

import numpy as np


class VerificationError(RuntimeError):
    """An exported artefact does not reproduce its Keras model.

    Args:
        message: what differs, naming the worst output (and layer when found).
        report: the verification report dict, available as `error.report` (None when the
            failure happened before a report existed).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


def _jsonable(value):
    """numpy scalars / arrays, tuples and paths -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, type):
        return value.__name__
    return value


def atomic_write_bytes(path, data):
    """Writes `data` to `path` through a temporary file and a rename.

    An interrupted write leaves at most a hidden `.<name>.<pid>.tmp` file, never a truncated
    `path`; an existing `path` is replaced only once the new content is complete on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_report(path, report):
    """Writes `report` (a dict) as indented JSON, atomically; returns the path."""
    text = json.dumps(_jsonable(report), indent=2, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))
