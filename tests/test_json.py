"""`keras_deeplab._json.jsonable`: the one numpy -> JSON conversion of the package's reports."""

import json
from pathlib import Path

import numpy as np

from keras_deeplab._json import jsonable


def test_numpy_containers_paths_and_types_become_plain_json():
    value = {
        1: np.int64(3),
        "iou": np.array([0.5, np.nan], np.float32),
        "shape": (np.int32(2), 4),
        "ok": np.bool_(True),
        "path": Path("a") / "b.tflite",
        "dtype": np.float32,
        "nested": [{"x": np.float64(1.5)}],
    }
    out = jsonable(value)
    assert out["1"] == 3 and type(out["1"]) is int
    assert out["iou"][0] == 0.5 and np.isnan(out["iou"][1])
    assert out["shape"] == [2, 4] and type(out["shape"][0]) is int
    assert out["ok"] is True
    assert out["path"] == str(Path("a") / "b.tflite")
    assert out["dtype"] == "float32"
    assert out["nested"] == [{"x": 1.5}] and type(out["nested"][0]["x"]) is float
    json.dumps(out)  # no TypeError


def test_nan_as_none_gives_strict_json():
    out = jsonable(
        {"miou": np.float64("nan"), "per_class": np.array([np.nan, 1.0])}, nan_as_none=True
    )
    assert out == {"miou": None, "per_class": [None, 1.0]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
