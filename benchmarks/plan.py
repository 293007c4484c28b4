"""Which cells a run measures and which it skips: models, sizes, budgets, cost prediction.

A cell is `(backend, size, batch)`. Before measuring one, its batch-1 latency is predicted from
what was measured so far (`predict_b1_ms`) and `skip_reason` says why it would not fit the
model's or the cell's time budget ("n/a" in the report, with the reason).
"""

from benchmarks.backends import BACKENDS

MAIN_MODELS = (
    "deeplabv3plus_xception65",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3_mobilenetv2_dm05",
    "deeplabv3_mobilenetv2",
    "deeplabv2_resnet101_aspp_l",
)
SIZES = (257, 513, 1025)
# Seconds of measuring per model in the full run (cells beyond it are reported "n/a").
MODEL_BUDGETS = {
    "deeplabv3plus_xception65": 420,
    "deeplabv3plus_resnet50": 360,
    "deeplabv3plus_resnet101": 420,
    "deeplabv3_mobilenetv2_dm05": 200,
    "deeplabv3_mobilenetv2": 240,
    "deeplabv2_resnet101_aspp_l": 420,
}
PEER_SIZE = 512
PEER_MODEL = "deeplabv3plus_resnet50"
TRAIN_MODELS = ("deeplabv3plus_mobilenetv2", "deeplabv3plus_resnet50")

DEFAULT_LIMITS = {
    "cell_budget_s": 30.0,
    "model_budget_s": 1e9,
    "tflite_max_size": 1025,
    "measure_budget_s": 6.0,
    "min_reps": 2,
    "max_reps": 10,
    "tflite_max_gflop": 130.0,
    "bf16_agreement_size": 257,
}


def build_plan(quick):
    """The full run's plan, or `--quick`'s (one small model at 129/257 px, no peer)."""
    if quick:
        return {
            "models": ["deeplabv3_mobilenetv2_dm05"],
            "sizes": [129, 257],
            "backends": list(BACKENDS),
            "limits": {"measure_budget_s": 1.0, "max_reps": 5, "min_reps": 2},
            "train": [("deeplabv3_mobilenetv2_dm05", 129, 2, 3)],
            "pipeline": {"crop": 129, "batch": 2, "batches": 5},
            "crf": {"size": 129, "images": 2},
            "peers": False,
            "peak": {"n": 2048, "reps": 3},
            "budgets": {},
        }
    return {
        "models": list(MAIN_MODELS),
        "sizes": list(SIZES),
        "backends": list(BACKENDS),
        "limits": {},
        "train": [(m, 513, 8, 3) for m in TRAIN_MODELS],
        "pipeline": {"crop": 513, "batch": 8, "batches": 12},
        "crf": {"size": 513, "images": 6},
        "peers": True,
        "peak": {"n": 4096, "reps": 6},
        "budgets": dict(MODEL_BUDGETS),
    }


def plan_cells(sizes, backends, batches=(1, 8)):
    """Every (backend, size, batch) cell in measurement order: all batch-1 cells first."""
    cells = []
    for batch in batches:
        for size in sizes:
            for backend in backends:
                cells.append((backend, size, batch))
    return cells


def predict_b1_ms(b1, backend, size, previous=None):
    """Expected batch-1 ms of `(backend, size)` from what was measured so far (None: no idea).

    Measured: that. Else the backend's latency at a smaller size scaled as Keras' grew
    (XLA runs several times slower than Keras here, so Keras alone would mislead). Else
    Keras at this size; else the last Keras latency scaled by the pixel count.

    Example: `predict_b1_ms({("keras", 257): 100.0}, "xla", 257)` -> 100.0.
    """
    if (backend, size) in b1:
        return b1[(backend, size)]
    smaller = [s for (b, s) in b1 if b == backend and s < size and ("keras", s) in b1]
    if smaller and ("keras", size) in b1:
        s0 = max(smaller)
        return b1[(backend, s0)] * b1[("keras", size)] / b1[("keras", s0)]
    if ("keras", size) in b1:
        return b1[("keras", size)]
    if previous is not None:
        prev_size, prev_ms = previous
        return prev_ms * (size / prev_size) ** 2
    return None


def skip_reason(backend, size, batch, b1_ms, gflop, limits, remaining_s):
    """Why a cell is skipped (None: measure it). `b1_ms`: predicted batch-1 latency."""
    if backend.startswith("tflite") and (
        gflop[size] > limits["tflite_max_gflop"] or size > limits["tflite_max_size"]
    ):
        return (
            f"n/a (TFLite skipped: {gflop[size]:.0f} GFLOP/image > "
            f"{limits['tflite_max_gflop']:.0f}, conversion + calibration too slow)"
        )
    if backend == "tflite_int8" and batch > 1:
        return "n/a (int8 batch 8 skipped: same per-image cost as batch 1)"
    if backend == "keras_fold" and batch > 1:
        return "n/a (ablation: batch 1 only)"
    if remaining_s <= 0:
        return "n/a (model's time budget used up)"
    if b1_ms is not None:
        predicted = b1_ms * batch * (1 + limits["min_reps"]) / 1e3
        if predicted > min(limits["cell_budget_s"], remaining_s):
            return f"n/a (predicted {predicted:.0f} s > budget)"
    return None
