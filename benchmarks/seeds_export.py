"""Every seed architecture exported to float TFLite and SavedModel, each verified against Keras.

One representative model per architecture family (FCN-VGG, FCN-ResNet, SegNet, SegNet-Basic,
U-Net valid and same, PSPNet, UperNet, RefineNet, ParseNet, Dilation8, the context module on
MobileNetV2), built with seeded random weights at its full published width, exported through
`keras_deeplab.export.to_tflite` and `to_saved_model` at a small input size (the op list does
not depend on it), and verified on sample images: the report holds the TFLite op counts (every
op must be a TFLite builtin: no custom or Flex op), the max abs difference against Keras on the
reference kernels and with the XNNPACK delegate, the logit scale, the argmax agreement and the
SavedModel's max difference.

Run: `nice -n 10 python -m benchmarks.seeds_export [--models a,b] [--size 65]`; writes
`benchmarks/results/seeds_export.{json,md}` (rows of models not named are kept). Not a test (the 134M-parameter VGG models take
minutes each to convert); the architectures' own tests export small variants.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR
from keras_deeplab._json import jsonable

# name -> (input size, create_model overrides)
MODELS = {
    "fcn8s": (65, {}),
    "fcn_resnet50": (65, {}),
    "segnet": (65, {"num_classes": 11}),
    "segnet_basic": (65, {"num_classes": 11}),
    "unet": (188, {}),
    "unet_same": (65, {"input_shape": (None, None, 1)}),
    "pspnet50": (65, {}),
    "upernet_resnet50": (65, {}),
    "refinenet_resnet50": (65, {}),
    "parsenet_vgg16_largefov": (65, {}),
    "dilation8_voc": (33, {}),
    "context_mobilenetv2": (65, {}),
}


def _fill_zero_weights(model, std=0.01):
    """Zero-initialised trainable weights (FCN's score layers, per the paper) drawn at random
    instead, so the exported logits are not identically zero and the comparison means
    something; the fixed (non-trainable) upsampling kernels stay as built."""
    import numpy as np

    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:
        value = np.asarray(weight)
        if value.ndim > 1 and not value.any():
            weight.assign(rng.normal(0.0, std, value.shape).astype(value.dtype))


def export_one(name, size, overrides, folder):
    import keras

    from keras_deeplab import create_model
    from keras_deeplab.export import VerificationError, to_saved_model, to_tflite

    keras.utils.set_random_seed(0)
    model = create_model(name, **overrides)
    _fill_zero_weights(model)
    row = {"model": name, "input_size": size, "params": model.count_params()}
    start = time.perf_counter()
    try:
        report = to_tflite(model, folder / f"{name}.tflite", input_size=size)
    except VerificationError as error:
        report = error.report
    row["tflite_seconds"] = round(time.perf_counter() - start, 1)
    row["tflite"] = {
        key: report.get(key)
        for key in (
            "passed",
            "op_counts",
            "max_abs_diff",
            "max_abs_diff_delegate",
            "tolerance",
            "criterion",
            "argmax_agreement",
        )
    }
    row["tflite"]["custom_ops"] = sorted(
        op for op in (report.get("op_counts") or {}) if op in ("CUSTOM", "FLEX", "DELEGATE")
    )
    start = time.perf_counter()
    try:
        saved = to_saved_model(model, folder / f"{name}_saved_model")
        row["saved_model"] = {
            "passed": saved.get("passed"),
            "max_abs_diff": max((saved.get("max_abs_diff") or {}).values(), default=None),
        }
    except VerificationError as error:
        row["saved_model"] = {"passed": False, "error": str(error)[:300]}
    row["saved_model_seconds"] = round(time.perf_counter() - start, 1)
    keras.backend.clear_session()
    return row


def markdown(rows):
    lines = [
        "| model | input | TFLite ops (builtin) | max abs diff (ref / XNNPACK) | argmax agreement "
        "| TFLite verified | SavedModel max diff |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        t, s = r["tflite"], r["saved_model"]
        ops = ", ".join(sorted(t["op_counts"] or {}))
        diff = (
            f"{t['max_abs_diff']:.2g} / {t['max_abs_diff_delegate']:.2g}"
            if t["max_abs_diff"] is not None
            else "-"
        )
        saved = f"{s['max_abs_diff']:.2g}" if s.get("max_abs_diff") is not None else "failed"
        verdict = "yes" if t["passed"] else "NO"
        if t.get("criterion"):
            verdict += f" ({t['criterion']})"
        lines.append(
            f"| `{r['model']}` | {r['input_size']} | {ops} | {diff} "
            f"| {t['argmax_agreement']:.4f} | {verdict} | {saved} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "seeds_export.json")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            size, overrides = MODELS[name]
            print(f"{name}: exporting at {size} px ...", flush=True)
            row = export_one(name, size, overrides, Path(tmp))
            print(json.dumps(jsonable(row)), flush=True)
            rows.append(row)
            for path in Path(tmp).iterdir():  # the 500 MB VGG files: one at a time on disk
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if args.out.exists():  # rows of models not run this time are kept
        done = {row["model"] for row in rows}
        kept = [r for r in json.loads(args.out.read_text())["rows"] if r["model"] not in done]
        rows = sorted(kept + rows, key=lambda r: list(MODELS).index(r["model"]))
    args.out.write_text(json.dumps(jsonable({"rows": rows}), indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    bad = [r["model"] for r in rows if not (r["tflite"]["passed"] and r["saved_model"]["passed"])]
    if bad:
        raise SystemExit(f"not verified: {bad}")


if __name__ == "__main__":
    main()
