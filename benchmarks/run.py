"""One entry point for the speed benchmarks: inference, training, input pipeline, CRF, peers.

Run: `python -m benchmarks.run` (full, 46 min on the 2-core Xeon of the README's run) or
`--quick` (one small model at 129/257 px, about 3 min); `--models`, `--sizes`, `--backends`,
`--batches`, `--no-peers`, `--no-train` and `--out` narrow a run. Writes
`benchmarks/results/run.json`, `run.md` (every cell, skip reasons) and `run_summary.md` (the
README's compact tables); `run_quick.*` with `--quick`. Every measurement runs in its own
subprocess (`--worker`), so peak resident memory is per configuration and one model's memory
never slows the next.

What is measured (warm-up calls excluded, median latency):

* fp32 matmul peak: a 4096x4096 float32 `tf.linalg.matmul` in a `tf.function`, best of
  several reps, measured at the start and the end of the run (the higher is used).
* inference per model and size (257, 513, 1025): latency at batch 1 and throughput at
  batch 8 for Keras `tf.function` (as built), after `fold_batch_norm` only (batch 1, an
  ablation), after `optimize_for_inference` (BN folded + large-rate dilated depthwise via
  space-to-batch), the same + `mixed_bfloat16` (CPUs with AVX512_BF16/AMX), XLA
  (`jit_compile=True`), the SavedModel as exported by default and with `optimize=True`
  (`to_saved_model`, its `serve` signature) and TFLite float32 / int8 (LiteRT, 2 threads;
  files are batch-1, so their "batch 8" is 8 invocations). Multiply-adds from
  `keras_deeplab.macs.count_macs`; achieved GFLOP/s = 2 * MACs * images / s; fraction of
  the matmul peak. Cells whose predicted time exceeds the budget are reported "n/a" with the
  reason.
* training images/s (crop 513, batch 8; SGD momentum + pixel cross-entropy in one
  `tf.function`), peak RSS; input pipeline images/s (`train_pipeline` on CamVid JPEGs, crop
  513, batch 8) against what training consumes.
* dense CRF seconds per 513x513 image with 21 classes: one process, and `batch_crf` with
  all cores.
* latency against pixel count: exponent of the log-log fit over 257 -> 513 -> 1025.
* keras-hub `DeepLabV3ImageSegmenter` (ResNet50, P2 low-level features, 512x512, random
  weights) in `benchmarks/.venv-peers` (create with `bash benchmarks/setup_peers.sh`), vs our
  DeepLabV3+ resnet50 at 512.
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS_DIR, measure

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = Path(__file__).parent / ".venv-peers" / "bin" / "python"
RESULT_TAG = "BENCHMARK_RESULT:"

MAIN_MODELS = (
    "deeplabv3plus_xception65",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3_mobilenetv2_dm05",
    "deeplabv3_mobilenetv2",
    "deeplabv2_resnet101_aspp_l",
)
SIZES = (257, 513, 1025)
BACKENDS = ("keras", "keras_fold", "keras_opt", "keras_opt_bf16", "xla", "saved_model")
BACKENDS = (*BACKENDS, "saved_model_opt", "tflite_fp32", "tflite_int8")
BACKEND_LABELS = {
    "keras": "Keras tf.function",
    "keras_fold": "Keras, BN folded only",
    "keras_opt": "Keras optimised",
    "keras_opt_bf16": "Keras optimised + bf16",
    "xla": "XLA (jit_compile)",
    "saved_model": "SavedModel",
    "saved_model_opt": "SavedModel optimised",
    "tflite_fp32": "TFLite fp32",
    "tflite_int8": "TFLite int8",
}
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


# ---------------------------------------------------------------- timing


def matmul_peak(n=4096, reps=6):
    """fp32 matmul GFLOP/s: best of `reps` `n x n @ n x n` products in a `tf.function`."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    b = tf.random.normal([n, n], dtype=tf.float32)
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)))
    matmul(a, b).numpy()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return {"n": n, "reps": reps, "best_ms": 1e3 * best, "gflops": 2 * n**3 / best / 1e9}


# ---------------------------------------------------------------- inference


def _images(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def _keras_fn(model, jit_compile=False):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)


def calibration_images(size):
    """`(images, source)`: the 8 VOC 2012 val images at `size`, or 8 synthetic ones without
    `../shared/data`."""
    from benchmarks._common import voc_samples

    try:
        return [rgb for _, rgb, _ in voc_samples(size)], "VOC 2012 val"
    except SystemExit:  # shared data missing
        from keras_deeplab.export.tflite import synthetic_images

        return synthetic_images((size, size), count=8), "synthetic"


def _agreement(a, b):
    return float(np.mean(np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)))


class _Backends:
    """Lazily built runners `(backend, size) -> callable(batch array) -> output array`."""

    def __init__(self, model, workdir, num_threads=2):
        self.model, self.workdir, self.num_threads = model, Path(workdir), num_threads
        self._folded = self._optimized = self._bf16 = None
        self._saved = {}
        self._fns = {}
        self.notes = {}

    def folded(self):
        if self._folded is None:
            from keras_deeplab.optimize import fold_batch_norm

            self._folded = fold_batch_norm(self.model)
        return self._folded

    def optimized(self):
        if self._optimized is None:
            from keras_deeplab.optimize import optimize_for_inference

            self._optimized = optimize_for_inference(self.model)
        return self._optimized

    def bf16(self):
        if self._bf16 is None:
            from keras_deeplab.optimize import optimize_for_inference

            self._bf16 = optimize_for_inference(self.model, dtype_policy="mixed_bfloat16")
        return self._bf16

    def saved(self, optimize):
        if optimize not in self._saved:
            import tensorflow as tf

            from keras_deeplab.export import to_saved_model

            name = "saved_model_opt" if optimize else "saved_model"
            path = self.workdir / name
            start = time.perf_counter()
            to_saved_model(self.model, path, verify=False, overwrite=True, optimize=optimize)
            self.notes[f"{name}_export_s"] = round(time.perf_counter() - start, 2)
            self._saved[optimize] = tf.saved_model.load(str(path)).signatures["serve"]
        return self._saved[optimize]

    def tflite(self, size, quantize):
        key = ("tflite", size, quantize)
        if key not in self._fns:
            from ai_edge_litert.interpreter import Interpreter

            from keras_deeplab.export import to_tflite

            path = self.workdir / f"model_{size}_{quantize}.tflite"
            calibration = None
            if quantize == "int8":
                calibration, source = calibration_images(size)
                self.notes["int8_calibration"] = f"{len(calibration)} {source} images"
            start = time.perf_counter()
            to_tflite(
                self.model,
                path,
                input_size=size,
                quantize="none" if quantize == "fp32" else "int8",
                representative_data=calibration,
                representative_steps=None if calibration is None else len(calibration),
                verify=False,
            )
            self.notes[f"tflite_{quantize}_{size}_convert_s"] = round(
                time.perf_counter() - start, 2
            )
            it = Interpreter(model_path=str(path), num_threads=self.num_threads)
            it.allocate_tensors()
            self._fns[key] = it
        return self._fns[key]

    def runner(self, backend, size):
        """callable(x [B, size, size, 3] float32) -> output array, for `backend`."""
        import tensorflow as tf

        if backend in ("keras", "keras_fold", "keras_opt", "keras_opt_bf16", "xla"):
            if backend not in self._fns:
                model = {
                    "keras": lambda: self.model,
                    "keras_fold": self.folded,
                    "keras_opt": self.optimized,
                    "keras_opt_bf16": self.bf16,
                    "xla": lambda: self.model,
                }[backend]()
                self._fns[backend] = _keras_fn(model, jit_compile=backend == "xla")
            fn = self._fns[backend]
            return lambda x: fn(tf.constant(x)).numpy()
        if backend in ("saved_model", "saved_model_opt"):
            serve = self.saved(backend == "saved_model_opt")
            return lambda x: next(iter(serve(images=tf.constant(x)).values())).numpy()
        if backend.startswith("tflite_"):
            from benchmarks._common import run as run_tflite

            it = self.tflite(size, backend.split("_")[1])

            def invoke(x):
                return np.concatenate([run_tflite(it, x[i : i + 1]) for i in range(len(x))])

            return invoke
        raise ValueError(f"unknown backend {backend!r}")


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


def _skip_reason(backend, size, batch, b1_ms, gflop, limits, remaining_s):
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


def bench_inference(name, sizes, backends, batches=(1, 8), limits=None, num_classes=21):
    """Latency / throughput of one model over sizes and backends (see the module docstring)."""

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
        runners = _Backends(model, workdir)
        b1 = {}  # (backend, size) -> measured batch-1 latency
        previous = None
        for backend, size, batch in plan_cells(sizes, backends, batches):
            base = predict_b1_ms(b1, backend, size, previous)
            remaining = limits["model_budget_s"] - (time.perf_counter() - started)
            reason = _skip_reason(backend, size, batch, base, gflop, limits, remaining)
            if backend == "keras" and batch == 1:
                reason = None  # the baseline of every size is always measured
            cell = {"backend": backend, "size": size, "batch": batch}
            if reason is None:
                try:
                    run = runners.runner(backend, size)
                    x = _images(batch, size)
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
        # Accuracy of the optimised variants against the model as built (one image).
        size = min(sizes, key=lambda s: abs(s - limits["bf16_agreement_size"]))
        x = _images(1, size, seed=1)
        reference = runners.runner("keras", size)(x)
        for backend in backends:
            if backend == "keras":
                continue
            measured = any(
                c["backend"] == backend and c["size"] == size and "median_ms" in c
                for c in result["cells"]
            )
            if not measured:
                continue
            out = runners.runner(backend, size)(x)
            if out.shape != reference.shape:  # SavedModel serve may return probabilities
                continue
            result["accuracy"][backend] = {
                "size": size,
                "max_abs_diff": float(np.max(np.abs(out - reference))),
                "argmax_agreement": _agreement(out, reference),
            }
        result["notes"] = runners.notes
    result["scaling"] = scaling_exponents(result["cells"], macs)
    return result


def scaling_exponents(cells, macs):
    """`{backend: exponent}`: slope of log(latency) vs log(pixels), batch 1, >= 2 sizes."""
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


# ---------------------------------------------------------------- training / pipeline / CRF


def bench_train(name, crop=513, batch=8, steps=3, budget_s=60.0, num_classes=21, fused_bn=True):
    """Images/s of one SGD step (pixel cross-entropy, momentum 0.9) at `crop`, `batch`.

    `fused_bn=False` runs every BatchNorm through Keras' own (unfused) training path: the
    "before" of the fused-BatchNorm optimisation.
    """
    import keras
    import tensorflow as tf

    import keras_deeplab
    from keras_deeplab.training.batchnorm import batch_norm_layers

    model = keras_deeplab.create_model(name, num_classes=num_classes)
    for layer in batch_norm_layers(model):
        layer.fused = fused_bn
    out = _train_loop(model, crop, batch, steps, budget_s, num_classes, keras, tf)
    return {**out, "fused_bn": fused_bn}


def _train_loop(model, crop, batch, steps, budget_s, num_classes, keras, tf):
    optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, crop, crop, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    stats = measure(
        lambda: float(step(x, y)), min_reps=min(2, steps), max_reps=steps, budget_s=budget_s
    )
    return {
        "crop": crop,
        "batch": batch,
        **stats,
        "images_per_s": batch / (stats["median_ms"] / 1e3),
    }


def bench_pipeline(crop=513, batch=8, batches=12, data_dir=None):
    """Images/s of `train_pipeline` (official augmentation) on CamVid JPEG/PNG pairs."""
    from keras_deeplab.data import camvid, train_pipeline

    root = Path(data_dir) if data_dir else REPO.parent / "shared" / "data"
    data = camvid(root / "camvid_segnet", "train")
    ds = train_pipeline(data, batch, crop_size=crop, seed=0).repeat()
    it = iter(ds)
    for _ in range(2):  # warm-up: graph building, first files
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    seconds = time.perf_counter() - start
    return {
        "source": f"camvid_segnet train ({data.num_examples} pairs, 480x360)",
        "crop": crop,
        "batch": batch,
        "batches": batches,
        "images_per_s": batch * batches / seconds,
        "shape": list(images.shape),
    }


def bench_crf(size=513, num_classes=21, images=4, seed=0, processes=None):
    """Dense CRF seconds per image: serial in one process, and `batch_crf` over all cores."""
    from keras_deeplab.crf import batch_crf, dense_crf

    rng = np.random.default_rng(seed)
    imgs, probs = [], []
    for _ in range(images):
        imgs.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        logits = rng.normal(0, 2, (size, size, num_classes)).astype(np.float32)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        probs.append((p / p.sum(-1, keepdims=True)).astype(np.float32))
    dense_crf(imgs[0], probs[0])  # warm-up (imports)
    start = time.perf_counter()
    for image, prob in zip(imgs, probs, strict=True):
        dense_crf(image, prob)
    serial = (time.perf_counter() - start) / images
    processes = processes or os.cpu_count() or 1
    start = time.perf_counter()
    batch_crf(imgs, probs, processes=processes)
    parallel = (time.perf_counter() - start) / images
    return {
        "size": size,
        "classes": num_classes,
        "images": images,
        "preset": "deeplabv2_resnet101 (10 iterations)",
        "serial_s_per_image": serial,
        "processes": processes,
        "parallel_s_per_image": parallel,
    }


# ---------------------------------------------------------------- workers


def _worker(task):
    """Runs one task in this process; prints the tagged JSON result."""
    kind = task["kind"]
    if kind == "peak":
        out = matmul_peak(task.get("n", 4096), task.get("reps", 6))
    elif kind == "infer":
        out = bench_inference(
            task["model"],
            task["sizes"],
            task["backends"],
            tuple(task.get("batches", (1, 8))),
            task.get("limits"),
        )
    elif kind == "train":
        out = bench_train(
            task["model"],
            task["crop"],
            task["batch"],
            task.get("steps", 3),
            fused_bn=task.get("fused_bn", True),
        )
    elif kind == "pipeline":
        out = bench_pipeline(task["crop"], task["batch"], task.get("batches", 12))
    elif kind == "crf":
        out = bench_crf(task["size"], images=task.get("images", 4))
    else:
        raise ValueError(f"unknown task {kind!r}")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT_TAG + json.dumps(out), flush=True)


def run_subprocess(args, python=None, timeout=3600, env=None):
    """Runs a worker command; returns its tagged JSON result or `{"error": ...}`."""
    cmd = [str(python or sys.executable), *args]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG) :])
            out["wall_s"] = round(time.perf_counter() - start, 1)
            return out
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def run_task(task, timeout=3600):
    print(f"[benchmarks] {json.dumps(task)}", flush=True)
    out = run_subprocess(["-m", "benchmarks.run", "--worker", json.dumps(task)], timeout=timeout)
    if "error" in out:
        print(f"[benchmarks]   failed: {out['error']}", flush=True)
    return out


def run_peer(task, timeout=3600):
    """keras-hub worker in its own venv; `{"error": ...}` when the venv is missing."""
    if not PEERS_PYTHON.exists():
        return {
            "error": f"{PEERS_PYTHON} not found: run `bash benchmarks/setup_peers.sh` to install "
            "keras-hub in its own environment (it needs the full tensorflow package)."
        }
    print(f"[benchmarks] keras-hub {json.dumps(task)}", flush=True)
    out = run_subprocess(
        ["-m", "benchmarks.peer_kerashub_worker", json.dumps(task)],
        python=PEERS_PYTHON,
        timeout=timeout,
    )
    if "error" in out:
        print(f"[benchmarks]   keras-hub failed: {out['error']}", flush=True)
    return out


# ---------------------------------------------------------------- machine and report


def machine_info():
    import keras
    import tensorflow as tf

    cpu, flags = platform.processor() or "unknown", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line
        )
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [
        f
        for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
        if f" {f}" in flags
    ]
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu": cpu,
        "isa": isa,
        "cores": os.cpu_count(),
        "memory_gib": None if memory_gib is None else round(memory_gib, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
    }


def _fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _cell(result, backend, size, batch):
    for c in result.get("cells", []):
        if (c["backend"], c["size"], c["batch"]) == (backend, size, batch):
            return c
    return None


def render_markdown(report):
    """The README table(s) from a report dict."""
    peak = report["peak"]["gflops"]
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {', '.join(m['isa'])}), "
        f"{m['memory_gib']} GiB; TF {m['tensorflow']}, Keras {m['keras']}, Python "
        f"{m['python']}; {m['date']}; load average at start {m['load_average_at_start'][0]:.2f}.",
        f"Command: `{report['command']}` ({report['wall_minutes']:.1f} min).",
        "",
        f"fp32 matmul peak (4096x4096 `tf.linalg.matmul`, same run): **{peak:,.0f} GFLOP/s** "
        f"(start {report['peak']['start']['gflops']:,.0f}, end "
        f"{report['peak'].get('end', {}).get('gflops', float('nan')):,.0f}).",
        "",
        "### Inference",
        "",
        "Latency: median ms at batch 1; throughput: images/s at batch 8 (TFLite files are "
        "batch-1: 8 invocations); GFLOP/s = 2 x MACs x images/s; % = of the matmul peak.",
        "",
        "| model | px | GFLOP/img | backend | b1 ms | b1 GFLOP/s | b1 % peak | b8 img/s "
        "| b8 GFLOP/s | b8 % peak |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["inference"]:
        if "error" in result:
            lines.append(
                f"| {result.get('model', '?')} | | | error: {result['error']} | | | | | | |"
            )
            continue
        for size_key, macs in result["macs"].items():
            size = int(size_key)
            gflop = 2 * macs / 1e9
            for backend in BACKENDS:
                b1, b8 = _cell(result, backend, size, 1), _cell(result, backend, size, 8)
                if b1 is None and b8 is None:
                    continue
                row = [result["model"], str(size), _fmt(gflop), BACKEND_LABELS[backend]]
                for c, batch in ((b1, 1), (b8, 8)):
                    if c is None or "median_ms" not in c:
                        reason = "n/a" if c is None else c.get("skipped", "n/a")
                        row += [reason, "", ""] if batch == 1 else [reason, "", ""]
                        continue
                    first = _fmt(c["median_ms"]) if batch == 1 else _fmt(c["images_per_s"], 2)
                    row += [first, _fmt(c["gflops"], 0), _fmt(100 * c["gflops"] / peak, 0)]
                lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Optimisations (same run, batch 1; speed-up over Keras as built)", ""]
    lines += [
        "| model | px | "
        + " | ".join(BACKEND_LABELS[b] for b in BACKENDS[1:7])
        + " | bf16 argmax agreement |"
    ]
    lines += ["|---|---:|" + "---:|" * 7]
    for result in report["inference"]:
        if "error" in result:
            continue
        for size_key in result["macs"]:
            size = int(size_key)
            base = _cell(result, "keras", size, 1)
            if not base or "median_ms" not in base:
                continue
            row = [result["model"], str(size)]
            for backend in BACKENDS[1:7]:
                c = _cell(result, backend, size, 1)
                ok = c is not None and "median_ms" in c
                row.append(f"{base['median_ms'] / c['median_ms']:.2f}x" if ok else "n/a")
            agreement = result.get("accuracy", {}).get("keras_opt_bf16")
            row.append(
                f"{100 * agreement['argmax_agreement']:.2f}% @{agreement['size']}"
                if agreement
                else "n/a"
            )
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Cost growth (batch 1 latency vs pixels, fitted exponent; MACs grow as 1.0)"]
    lines += ["", "| model | " + " | ".join(BACKEND_LABELS[b] for b in BACKENDS) + " |"]
    lines += ["|---|" + "---:|" * len(BACKENDS)]
    for result in report["inference"]:
        if "error" in result:
            continue
        s = result.get("scaling", {})
        lines.append(
            f"| {result['model']} | " + " | ".join(_fmt(s.get(b), 2) for b in BACKENDS) + " |"
        )
    peers = report.get("peers")
    if peers is not None:
        lines += [
            "",
            f"### keras-hub DeepLabV3ImageSegmenter vs ours ({PEER_SIZE}x{PEER_SIZE})",
            "",
        ]
        if "error" in peers:
            lines.append(f"keras-hub: **not measured**: {peers['error']}")
        else:
            lines += peer_rows(report)
    lines += ["", "### Training, input pipeline, CRF", ""]
    lines += ["| what | images/s | peak RSS MB | note |", "|---|---:|---:|---|"]
    for t in report.get("training", []):
        if "error" in t:
            lines.append(f"| train {t.get('model', '?')} | n/a | | {t['error']} |")
            continue
        bn = "" if t.get("fused_bn", True) else ", Keras BatchNorm (before)"
        lines.append(
            f"| train {t['model']} crop {t['crop']} batch {t['batch']}{bn} | "
            f"{_fmt(t['images_per_s'], 2)} | {_fmt(t['peak_rss_mb'], 0)} | "
            f"median of {t['samples']} steps, {_fmt(t['median_ms'] / 1e3, 2)} s/step |"
        )
    p = report.get("pipeline")
    if p and "error" not in p:
        fastest = max(
            (t["images_per_s"] for t in report.get("training", []) if "images_per_s" in t),
            default=float("nan"),
        )
        lines.append(
            f"| input pipeline ({p['source']}, crop {p['crop']}, batch {p['batch']}) | "
            f"{_fmt(p['images_per_s'], 1)} | {_fmt(p['peak_rss_mb'], 0)} | "
            f"{_fmt(p['images_per_s'] / fastest, 1)}x the fastest training consumption |"
        )
    elif p:
        lines.append(f"| input pipeline | n/a | | {p['error']} |")
    c = report.get("crf")
    if c and "error" not in c:
        lines.append(
            f"| dense CRF {c['size']}x{c['size']}, {c['classes']} classes, 1 process | "
            f"{_fmt(1 / c['serial_s_per_image'], 2)} | {_fmt(c['peak_rss_mb'], 0)} | "
            f"{_fmt(c['serial_s_per_image'], 2)} s/image |"
        )
        lines.append(
            f"| dense CRF, `batch_crf` {c['processes']} processes | "
            f"{_fmt(1 / c['parallel_s_per_image'], 2)} | | "
            f"{_fmt(c['parallel_s_per_image'], 2)} s/image |"
        )
    elif c:
        lines.append(f"| dense CRF | n/a | | {c['error']} |")
    speedups = fused_bn_speedups(report.get("training", []))
    if speedups:
        lines += ["", "Training step, fused BatchNorm (ours) over Keras' BatchNorm, same run:"]
        lines += [f"* {model}: **{ratio:.2f}x** images/s" for model, ratio in speedups.items()]
    return "\n".join(lines) + "\n"


def fused_bn_speedups(training):
    """`{model: fused images/s / Keras-BN images/s}` for models measured both ways."""
    rates = {}
    for t in training:
        if "images_per_s" in t:
            rates[(t["model"], t.get("fused_bn", True))] = t["images_per_s"]
    return {
        model: rates[(model, True)] / rates[(model, False)]
        for model, fused in rates
        if fused and (model, False) in rates
    }


SUMMARY_B1 = tuple(b for b in BACKENDS if b != "keras_fold")  # folding: an ablation in run.md
SUMMARY_LABELS = {
    "keras": "Keras",
    "keras_opt": "Keras opt.",
    "keras_opt_bf16": "opt. + bf16",
    "xla": "XLA",
    "saved_model": "SavedModel",
    "saved_model_opt": "SavedModel opt.",
    "tflite_fp32": "TFLite fp32",
    "tflite_int8": "TFLite int8",
}


def render_summary(report):
    """The README's compact tables: one row per model and size, one column per backend."""
    peak = report["peak"]["gflops"]

    def table(batch, backends, value):
        head = "| model | px | GFLOP | " + " | ".join(SUMMARY_LABELS[b] for b in backends) + " |"
        rows = [head, "|---|---:|---:|" + "---:|" * len(backends)]
        for result in report["inference"]:
            if "error" in result:
                continue
            for size_key, macs in result["macs"].items():
                cells = [_cell(result, b, int(size_key), batch) for b in backends]
                if not any(c and "median_ms" in c for c in cells):
                    continue
                row = [result["model"], size_key, _fmt(2 * macs / 1e9)]
                for c in cells:
                    ok = c is not None and "median_ms" in c
                    row.append(f"{value(c)} ({100 * c['gflops'] / peak:.0f}%)" if ok else "n/a")
                rows.append("| " + " | ".join(row) + " |")
        return rows

    lines = ["Batch-1 latency, ms (% of the fp32 matmul peak):", ""]
    lines += table(1, SUMMARY_B1, lambda c: _fmt(c["median_ms"], 0 if c["median_ms"] >= 100 else 1))
    lines += ["", "Batch-8 throughput, images/s (% of the fp32 matmul peak):", ""]
    lines += table(
        8, SUMMARY_B1[:-1], lambda c: _fmt(c["images_per_s"], 1 if c["images_per_s"] >= 10 else 2)
    )
    lines += [
        "",
        "Latency growth with pixel count, batch 1, over the measured sizes (fitted exponent):",
        "",
    ]
    lines += ["| model | " + " | ".join(SUMMARY_LABELS[b] for b in SUMMARY_B1) + " |"]
    lines += ["|---|" + "---:|" * len(SUMMARY_B1)]
    for result in report["inference"]:
        if "error" not in result:
            s = result.get("scaling", {})
            row = " | ".join(_fmt(s.get(b), 2) for b in SUMMARY_B1)
            lines.append(f"| {result['model']} | {row} |")
    return "\n".join(lines) + "\n"


def peer_rows(report):
    """Rows comparing keras-hub with our DeepLabV3+ resnet50 at `PEER_SIZE`."""
    peers, peak = report["peers"], report["peak"]["gflops"]
    ours = report.get("peer_ours", {})
    hub_gflop = peers["gflop_per_image"]
    rows = [
        "| model | GFLOP/img | b1 ms | GFLOP/s | % peak | train img/s (b8) | train RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| keras-hub DeepLabV3ImageSegmenter (ResNet50, P2) | {hub_gflop:.1f} | "
        f"{_fmt(peers['median_ms'])} | {_fmt(peers['gflops'], 0)} | "
        f"{_fmt(100 * peers['gflops'] / peak, 0)} | "
        f"{_fmt(peers.get('train', {}).get('images_per_s'), 2)} | "
        f"{_fmt(peers.get('train', {}).get('peak_rss_mb'), 0)} |",
    ]
    for backend, c in ours.get("cells", {}).items():
        rows.append(
            f"| ours {PEER_MODEL}, {BACKEND_LABELS[backend]} | {ours['gflop_per_image']:.1f} | "
            f"{_fmt(c['median_ms'])} | {_fmt(c['gflops'], 0)} | "
            f"{_fmt(100 * c['gflops'] / peak, 0)} | | |"
        )
    rows += ["", "Ratios (ours / keras-hub; target: GFLOP/s >= 1.5x):", ""]
    for backend, c in ours.get("cells", {}).items():
        rows.append(
            f"* {BACKEND_LABELS[backend]}: achieved GFLOP/s **{c['gflops'] / peers['gflops']:.2f}x**, "
            f"latency {c['median_ms'] / peers['median_ms']:.2f}x "
            f"(ours {ours['gflop_per_image']:.1f} vs keras-hub {hub_gflop:.1f} GFLOP/image)."
        )
    ours_train = next(
        (
            t
            for t in report.get("training", [])
            if t.get("model") == PEER_MODEL and t.get("fused_bn", True) and "images_per_s" in t
        ),
        None,
    )
    hub_train = peers.get("train", {})
    if ours_train and "images_per_s" in hub_train:
        rows.append(
            f"* training images/s ours ({ours_train['crop']}) / keras-hub ({hub_train['crop']}): "
            f"**{ours_train['images_per_s'] / hub_train['images_per_s']:.2f}x**."
        )
    rows.append("")
    rows.append(f"keras-hub GFLOP counted as: {peers.get('macs_method', '?')}.")
    return rows


# ---------------------------------------------------------------- main


def build_plan(quick):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small model, 129/257 px")
    parser.add_argument("--models", nargs="+", default=None, help="override the model list")
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=None, help="override the backends"
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, default=None, help="inference batch sizes (1 8)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the keras-hub peer")
    parser.add_argument("--no-train", action="store_true", help="skip training/pipeline/CRF")
    parser.add_argument("--out", default=None, help="output stem (default results/run[_quick])")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return None

    started = time.perf_counter()
    plan = build_plan(args.quick)
    if args.models:
        plan["models"] = args.models
    if args.sizes:
        plan["sizes"] = args.sizes
    if args.backends:
        plan["backends"] = args.backends
    plan["batches"] = args.batches or [1, 8]
    stem = Path(args.out) if args.out else RESULTS_DIR / ("run_quick" if args.quick else "run")
    command = "python -m benchmarks.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    report = {"command": command.strip(), "machine": machine_info(), "plan": plan}
    report["peak"] = {"start": run_task({"kind": "peak", **plan["peak"]})}
    report["inference"] = []
    for name in plan["models"]:
        task = {
            "kind": "infer",
            "model": name,
            "sizes": plan["sizes"],
            "backends": plan["backends"],
            "batches": plan["batches"],
            "limits": {**plan["limits"], "model_budget_s": plan["budgets"].get(name, 1e9)},
        }
        report["inference"].append({"model": name, **run_task(task)})
    if plan["peers"] and not args.no_peers:
        ours = run_task(
            {
                "kind": "infer",
                "model": PEER_MODEL,
                "sizes": [PEER_SIZE],
                "backends": ["keras", "keras_opt", "keras_opt_bf16"],
                "batches": [1],
                "limits": {"measure_budget_s": 8.0, "min_reps": 3},
            }
        )
        if "error" not in ours:
            report["peer_ours"] = {
                "gflop_per_image": 2 * ours["macs"][str(PEER_SIZE)] / 1e9,
                "cells": {c["backend"]: c for c in ours["cells"] if "median_ms" in c},
            }
        report["peers"] = run_peer({"kind": "infer", "size": PEER_SIZE})
        if "error" not in report["peers"]:
            report["peers"]["train"] = run_peer(
                {"kind": "train", "size": PEER_SIZE, "batch": 8, "steps": 3}
            )
    if not args.no_train:
        report["training"] = [
            {
                "model": m,
                **run_task(
                    {
                        "kind": "train",
                        "model": m,
                        "crop": c,
                        "batch": b,
                        "steps": s,
                        "fused_bn": fused,
                    }
                ),
            }
            for m, c, b, s in plan["train"]
            for fused in (True, False)
        ]
        report["pipeline"] = run_task({"kind": "pipeline", **plan["pipeline"]})
        report["crf"] = run_task({"kind": "crf", **plan["crf"]})
    report["peak"]["end"] = run_task({"kind": "peak", **plan["peak"]})
    peaks = [p["gflops"] for p in (report["peak"]["start"], report["peak"]["end"]) if "gflops" in p]
    report["peak"]["gflops"] = max(peaks) if peaks else float("nan")
    report["wall_minutes"] = (time.perf_counter() - started) / 60
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    markdown = render_markdown(report)
    Path(f"{stem}.md").write_text(markdown)
    Path(f"{stem}_summary.md").write_text(render_summary(report))
    print(markdown)
    return report


if __name__ == "__main__":
    main()
