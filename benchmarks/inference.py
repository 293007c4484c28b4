"""Inference speed of one model over sizes, batches and backends, and the variants' accuracy.

`bench_inference` walks the plan's cells (`benchmarks.plan`), runs each through
`benchmarks.backends.Backends`, times it with `benchmarks._common.measure`, and compares every
optimised variant with the model as built on one image.
"""

import json
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import measure
from benchmarks.backends import BACKENDS, Backends, random_images
from benchmarks.plan import DEFAULT_LIMITS, plan_cells, predict_b1_ms, skip_reason


def argmax_agreement(a, b):
    """Fraction of pixels whose argmax class is the same in `a` and `b`."""
    return float(np.mean(np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)))


def bench_inference(name, sizes, backends, batches=(1, 8), limits=None, num_classes=21):
    """Latency / throughput of one model over sizes and backends (see `benchmarks.run`).

    Returns `{"model", "params", "batch_norms", "macs", "cells", "accuracy", "notes",
    "scaling"}`; a cell is `{"backend", "size", "batch", "median_ms", "images_per_s",
    "gflops", ...}` or `{..., "skipped": reason}`.
    """
    import keras_deeplab
    from keras_deeplab.macs import count_macs
    from keras_deeplab.optimize import count_batch_norms, cpu_has_bf16

    limits = {**DEFAULT_LIMITS, **(limits or {})}
    model = keras_deeplab.create_model(name, num_classes=num_classes)
    macs = {size: int(count_macs(model, size)) for size in sizes}
    gflop = {size: 2 * macs[size] / 1e9 for size in sizes}
    result = {
        "model": name,
        "params": int(model.count_params()),
        "batch_norms": count_batch_norms(model),
        "macs": {str(s): m for s, m in macs.items()},
        "cells": [],
        "accuracy": {},
    }
    if not cpu_has_bf16():
        backends = [b for b in backends if b != "keras_opt_bf16"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keras_deeplab_bench_") as workdir:
        runners = Backends(model, workdir)
        b1 = {}  # (backend, size) -> measured batch-1 latency
        previous = None
        for backend, size, batch in plan_cells(sizes, backends, batches):
            base = predict_b1_ms(b1, backend, size, previous)
            remaining = limits["model_budget_s"] - (time.perf_counter() - started)
            reason = skip_reason(backend, size, batch, base, gflop, limits, remaining)
            if backend == "keras" and batch == 1:
                reason = None  # the baseline of every size is always measured
            cell = {"backend": backend, "size": size, "batch": batch}
            if reason is None:
                try:
                    run = runners.runner(backend, size)
                    x = random_images(batch, size)
                    stats = measure(
                        lambda run=run, x=x: run(x),
                        min_reps=limits["min_reps"],
                        max_reps=limits["max_reps"],
                        budget_s=limits["measure_budget_s"],
                    )
                    images_per_s = batch / (stats["median_ms"] / 1e3)
                    cell.update(
                        stats,
                        images_per_s=images_per_s,
                        gflops=images_per_s * gflop[size],
                    )
                    if batch == 1:
                        b1[(backend, size)] = stats["median_ms"]
                    if backend == "keras" and batch == 1:
                        previous = (size, stats["median_ms"])
                except Exception as err:  # a failing backend must not stop the others
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    cell["skipped"] = f"n/a (error: {first[:160]})"
            else:
                cell["skipped"] = reason
            result["cells"].append(cell)
            print(json.dumps({"progress": name, **cell}), file=sys.stderr, flush=True)
        size = min(sizes, key=lambda s: abs(s - limits["bf16_agreement_size"]))
        result["accuracy"] = _accuracy(runners, result["cells"], backends, size)
        result["notes"] = runners.notes
    result["scaling"] = scaling_exponents(result["cells"], macs)
    return result


def _accuracy(runners, cells, backends, size):
    """`{backend: {"size", "max_abs_diff", "argmax_agreement"}}` against Keras as built, on
    one image, for the backends measured at `size`."""
    x = random_images(1, size, seed=1)
    reference = runners.runner("keras", size)(x)
    accuracy = {}
    for backend in backends:
        if backend == "keras":
            continue
        measured = any(
            c["backend"] == backend and c["size"] == size and "median_ms" in c for c in cells
        )
        if not measured:
            continue
        out = runners.runner(backend, size)(x)
        if out.shape != reference.shape:  # SavedModel serve may return probabilities
            continue
        accuracy[backend] = {
            "size": size,
            "max_abs_diff": float(np.max(np.abs(out - reference))),
            "argmax_agreement": argmax_agreement(out, reference),
        }
    return accuracy


def precision_check(precision="bfloat16", cached=None):
    """`keras_deeplab.evaluation.segmenter.verify_precision` of Google's DeepLabV3 MobileNetV2 (the
    official `deeplabv3_257_mv_gpu.tflite` weights) on the 8 shared VOC 2012 val samples,
    at their full size through the Segmenter: argmax agreement with float32 and mIoU in both.

    `cached`: a previous result; returned as is (`"cached": True`) when the model
    fingerprint and precision are the same (the verdict is computed once per weights and
    precision). `{"error": ...}` without the shared data.
    """
    from benchmarks._common import shared_data_dir
    from benchmarks.voc_samples_eval import OFFICIAL, load_samples
    from keras_deeplab.evaluation.segmenter import verify_precision
    from keras_deeplab.export.saved_model import model_fingerprint
    from keras_deeplab.weights import load_tflite

    try:
        model = load_tflite(shared_data_dir(OFFICIAL))
        samples = load_samples(shared_data_dir())
    except SystemExit as missing:  # shared data missing: say so, do not stop the run
        return {"error": str(missing)}
    fingerprint = model_fingerprint(model)
    cached = cached or {}
    if cached.get("fingerprint") == fingerprint and cached.get("precision") == precision:
        return {**cached, "cached": True}
    start = time.perf_counter()
    result = verify_precision(
        model, precision, [rgb for _, rgb, _ in samples], [mask for _, _, mask in samples]
    )
    return {
        **result,
        "model": f"{model.name} (Google's deeplabv3_257_mv_gpu.tflite weights)",
        "data": f"{len(samples)} VOC 2012 val samples, full size, single scale",
        "fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - start, 1),
        "cached": False,
    }


def scaling_exponents(cells, macs):
    """`{backend: exponent}`: slope of log(latency) vs log(pixels), batch 1, >= 2 sizes.

    `"macs"`: the same slope of the multiply-adds (1.0 for a fully convolutional model).
    """
    out = {}
    for backend in BACKENDS:
        points = [
            (c["size"], c["median_ms"])
            for c in cells
            if c["backend"] == backend and c["batch"] == 1 and "median_ms" in c
        ]
        if len(points) >= 2:
            pixels = np.log([s * s for s, _ in points])
            latency = np.log([ms for _, ms in points])
            out[backend] = float(np.polyfit(pixels, latency, 1)[0])
    macs = {int(s): m for s, m in macs.items()}
    sizes = sorted(macs)
    if len(sizes) >= 2:
        out["macs"] = float(
            np.polyfit(np.log([s * s for s in sizes]), np.log([macs[s] for s in sizes]), 1)[0]
        )
    return out
