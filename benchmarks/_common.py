"""Shared pieces of the benchmarks: data paths, VOC samples, mIoU, timing, worker results.

Imports only numpy at module level: the keras-hub worker imports it from its own venv, where
keras_deeplab is not installed.
"""

import json
import resource
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_TAG = "BENCHMARK_RESULT:"


def shared_data_dir(*parts):
    """The shared data folder, or `parts` below it; stops the script with the fix when missing.

    The one lookup the tests use too (`keras_deeplab._shared_data`: `$KERAS_DEEPLAB_SHARED_DATA`,
    else `../shared/data` beside the repository). Example: `shared_data_dir("camvid_segnet")`.
    """
    from keras_deeplab._shared_data import shared_data_dir as find

    try:
        return find(*parts)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None


def voc_samples(size, data_dir=None):
    """The VOC image / mask pairs: `[(name, rgb float32 [size, size, 3], mask uint8)]`.

    Images are PIL-bilinear-resized to `size` (as the official file's provenance check);
    masks stay at the image size (255 = ignore).
    """
    from PIL import Image

    root = Path(data_dir) / "voc2012_samples" if data_dir else shared_data_dir("voc2012_samples")
    samples = []
    for image_path in sorted((root / "JPEGImages").glob("*.jpg")):
        mask_path = root / "SegmentationClass" / f"{image_path.stem}.png"
        with Image.open(image_path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
        with Image.open(mask_path) as mask:
            labels = np.asarray(mask, np.uint8)
        samples.append((image_path.stem, np.asarray(rgb, np.float32), labels))
    if not samples:
        raise SystemExit(f"no VOC samples under {root}")
    return samples


def resize_logits(logits, hw):
    """`[H, W, C]` logits resized to `hw` with `tf.image.resize` bilinear.

    The resize the official file's provenance check used (its mIoU 0.7559 on the 8 images).
    """
    import tensorflow as tf

    return np.asarray(tf.image.resize(logits[None], hw, method="bilinear")[0])


class Confusion:
    """Confusion matrix summed over images; label 255 ignored."""

    def __init__(self, num_classes):
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def add(self, labels, prediction):
        keep = labels != 255
        n = self.matrix.shape[0]
        index = labels[keep].astype(np.int64) * n + prediction[keep].astype(np.int64)
        self.matrix += np.bincount(index, minlength=n * n).reshape(n, n)

    def scores(self):
        """`{"miou", "pixel_accuracy", "classes"}`: mean IoU over classes present in the GT."""
        m = self.matrix
        true_positive = np.diag(m).astype(np.float64)
        union = m.sum(0) + m.sum(1) - true_positive
        present = m.sum(1) > 0
        iou = true_positive[present] / union[present]
        return {
            "miou": float(iou.mean()),
            "pixel_accuracy": float(true_positive.sum() / m.sum()),
            "classes": int(present.sum()),
        }


def interpreter(path, num_threads):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=num_threads)
    it.allocate_tensors()
    return it


def run(it, x):
    """One invocation; returns the (dequantized) output."""
    detail = it.get_input_details()[0]
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    it.set_tensor(detail["index"], x)
    it.invoke()
    out = it.get_output_details()[0]
    y = it.get_tensor(out["index"])
    if y.dtype != np.float32 and out["quantization"][0]:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def interleaved_latency(paths, num_threads, x, rounds=40, per_round=10, warmup=20):
    """Median latency (ms) of each file, measured fairly in one process.

    All interpreters are created first and warmed up; then in every round each file runs
    `per_round` timed invocations, the order rotating from round to round, so slow phases
    of a shared machine hit every file alike. Returns `{name: {"median_ms", "p10_ms",
    "p90_ms", "samples"}}` and `{name: ratio}`, the median over rounds of the per-round
    median ratio to the first file (paired, robust to load drift).
    """
    names = list(paths)
    its = {name: interpreter(paths[name], num_threads) for name in names}
    for name, it in its.items():
        detail = it.get_input_details()[0]
        it.set_tensor(detail["index"], x[name])
        for _ in range(warmup):
            it.invoke()
    times = {name: [] for name in names}
    per_round_ratio = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        medians = {}
        for name in order:
            it = its[name]
            samples = []
            for _ in range(per_round):
                start = time.perf_counter()
                it.invoke()
                samples.append((time.perf_counter() - start) * 1e3)
            times[name].extend(samples)
            medians[name] = float(np.median(samples))
        for name in names:
            per_round_ratio[name].append(medians[name] / medians[names[0]])
    stats = {
        name: {
            "median_ms": float(np.median(t)),
            "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)),
            "samples": len(t),
        }
        for name, t in times.items()
    }
    ratios = {name: float(np.median(r)) for name, r in per_round_ratio.items()}
    return stats, ratios


def measure(fn, min_reps=3, max_reps=10, budget_s=10.0):
    """Runs `fn` once (warm-up, timed separately), then until `max_reps` or the budget.

    Returns `{"median_ms", "min_ms", "samples", "warmup_ms"}`; at least `min_reps` samples.
    """
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    samples = []
    begin = time.perf_counter()
    while len(samples) < max_reps and (
        len(samples) < min_reps or time.perf_counter() - begin < budget_s
    ):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {
        "median_ms": 1e3 * float(np.median(samples)),
        "min_ms": 1e3 * float(np.min(samples)),
        "samples": len(samples),
        "warmup_ms": 1e3 * warmup,
    }


def train_step_fn(model, optimizer):
    """A `tf.function` `step(images, labels) -> loss`: pixel cross-entropy on float32-cast
    logits, the gradients applied by `optimizer`."""
    import tensorflow as tf

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

    return step


def train_step_rate(model, crop, batch, steps, num_classes=21, budget_s=60.0):
    """Images/s of one SGD step (momentum 0.9, pixel cross-entropy) on random data.

    The step both `benchmarks.training.bench_train` and the keras-hub worker time. Returns
    `measure`'s stats with `crop`, `batch` and `images_per_s`.
    """
    import keras
    import tensorflow as tf

    step = train_step_fn(model, keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, crop, crop, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32))
    stats = measure(
        lambda: float(step(x, y)), min_reps=min(2, steps), max_reps=steps, budget_s=budget_s
    )
    return {
        "crop": crop,
        "batch": batch,
        **stats,
        "images_per_s": batch / (stats["median_ms"] / 1e3),
    }


def emit_result(out):
    """Prints a worker's result as one tagged JSON line, with this process' peak RSS (MB)."""
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT_TAG + json.dumps(out), flush=True)


def serve_timings(runners, meta, requests=None):
    """A long-lived timing worker (used by `benchmarks.peer_ratio`).

    `runners` maps a variant name to a no-argument callable that runs the model once. Every
    runner is called once (trace, warm-up), then `meta` goes out as one tagged line; each
    request line `{"variant": name, "reps": n}` read from `requests` (default stdin) is
    answered with one tagged line `{"variant", "median_ms", "best_ms"}` of `n` timed calls.
    Returns at the end of the input.
    """
    import sys

    for run_once in runners.values():
        run_once()
    emit_result({**meta, "variants": sorted(runners)})
    for line in requests if requests is not None else sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("variant") not in runners:
            emit_result({"error": f"unknown variant {request.get('variant')!r}"})
            continue
        median_ms, best_ms = timed_calls(
            runners[request["variant"]], max(1, int(request.get("reps", 3)))
        )
        emit_result({"variant": request["variant"], "median_ms": median_ms, "best_ms": best_ms})


def timed_calls(fn, reps):
    """`(median_ms, best_ms)` of `reps` calls of `fn()` (no warm-up call)."""
    import statistics

    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples), min(samples)


def report_header(module, argv, machine):
    """The first fields of a benchmark's report: the command that made it, when, and where."""
    import sys

    args = " ".join(sys.argv[1:] if argv is None else argv)
    return {
        "command": f"python -m {module} {args}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
    }


def header_line(report):
    """The markdown line of `report_header`'s fields: command, date, CPU, cores, ISA flags."""
    m = report["machine"]
    return (
        f"Command: `{report['command']}` ({report['date']}). Machine: {m['cpu']}, "
        f"{m['cores']} cores, ISA flags {', '.join(m['isa'])}."
    )


def write_report(stem, report, text):
    """Writes `<stem>.json` (the report) and `<stem>.md` (`text`), and prints the markdown."""
    stem = Path(stem)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float))
    stem.with_suffix(".md").write_text(text)
    print(text)


def percent(share):
    """A share as a whole percentage, or "n/a" when it was not measured (None)."""
    return "n/a" if share is None else f"{share:.0%}"
