"""Plain JSON types for the package's reports (evaluation, export, run directories).

Example:
    >>> import numpy as np
    >>> jsonable({"iou": np.array([0.5, np.nan]), 1: np.int64(3)}, nan_as_none=True)
    {'iou': [0.5, None], '1': 3}
"""

import math
import os

import numpy as np


def jsonable(value, *, nan_as_none=False):
    """`value` with numpy scalars / arrays, tuples, paths and classes as plain JSON types.

    Dict keys become strings, tuples and arrays lists, `os.PathLike` strings, classes their
    name. With `nan_as_none`, NaN floats become None (JSON has no NaN).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, nan_as_none=nan_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, nan_as_none=nan_as_none) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), nan_as_none=nan_as_none)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if nan_as_none and math.isnan(value) else value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, type):
        return value.__name__
    return value
