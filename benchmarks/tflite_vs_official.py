"""Our TFLite export vs Google's hand-converted `deeplabv3_257_mv_gpu.tflite`.

Google's file (MobileNetV2 dm0.5, OS8, PASCAL VOC, 257x257) is converted to Keras with
`keras_deeplab.weights.load_tflite(..., include_preprocessing=False)` (same input as the file:
`(rgb - 127.5) / 127.5`) and exported again with `keras_deeplab.export.to_tflite` at 257x257:
float32, float32 without the export-time graph rewrites (`optimize=False`, for reference), and
full-integer int8 (float I/O; calibrated on the 8 VOC sample images). In one run, with LiteRT
(XNNPACK) at 1 and 2 threads, interleaved:

* latency of every file (median; ratio to the official, paired per round);
* max abs logit difference ours-float32 vs official on the 8 VOC images (must be <= 1e-4);
* int8: argmax agreement with the float files, and VOC mIoU on the 8 images for all three
  (PIL bilinear resize to 257, logits resized to the image size with `tf.image.resize` bilinear,
  argmax, confusion summed over images, 255 ignored, mean over classes present).

Run: `python -m benchmarks.tflite_vs_official` (writes
`benchmarks/results/tflite_vs_official.json`). Not a test.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    Confusion,
    interleaved_latency,
    interpreter,
    resize_logits,
    run,
    shared_data_dir,
    voc_samples,
)

SIZE = 257
OFFICIAL = "deeplabv3_tflite/deeplabv3_257_mv_gpu.tflite"


def _evaluate(paths, samples, num_classes=21):
    """Logits of every file on every sample, and the mIoU of each file."""
    its = {name: interpreter(path, 1) for name, path in paths.items()}
    logits = {name: [] for name in paths}
    confusion = {name: Confusion(num_classes) for name in paths}
    for _, rgb, mask in samples:
        x = ((rgb - 127.5) / 127.5)[None].astype(np.float32)
        for name, it in its.items():
            y = run(it, x)[0]
            logits[name].append(y)
            confusion[name].add(mask, resize_logits(y, mask.shape).argmax(-1))
    return logits, {name: c.scores() for name, c in confusion.items()}


def _agreement(a, b):
    return float(
        np.mean([np.mean(x.argmax(-1) == y.argmax(-1)) for x, y in zip(a, b, strict=True)])
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--per-round", type=int, default=10, help="invocations per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(RESULTS_DIR / "tflite_vs_official.json"))
    parser.add_argument("--keep", default=None, help="folder to keep our .tflite files in")
    args = parser.parse_args(argv)

    from keras_deeplab.export import to_tflite
    from keras_deeplab.export.tflite import op_counts
    from keras_deeplab.weights import load_tflite

    data = Path(args.data) if args.data else shared_data_dir()
    official = data / OFFICIAL
    voc_images = data / "voc2012_samples" / "JPEGImages"
    samples = voc_samples(SIZE, data)

    model = load_tflite(official, include_preprocessing=False)
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="tflite_vs_official_"))
    paths = {"official": official}
    exports = {}
    for name, kwargs in (
        ("ours_float32", {}),
        ("ours_float32_unoptimized", {"optimize": False}),
        ("ours_int8", {"quantize": "int8", "representative_data": voc_images}),
    ):
        start = time.perf_counter()
        report = to_tflite(
            model, workdir / f"{name}.tflite", input_size=SIZE, sample_images=voc_images, **kwargs
        )
        paths[name] = workdir / f"{name}.tflite"
        exports[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "size_bytes": report["size_bytes"],
            "op_counts": report["op_counts"],
            "verification": {
                k: report[k]
                for k in (
                    "max_abs_diff",
                    "max_abs_diff_delegate",
                    "argmax_agreement",
                    "agreement_floor",
                    "delegate_partitions",
                    "passed",
                )
            },
        }

    logits, miou = _evaluate(paths, samples)
    diffs = {
        name: max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(logits[name], logits["official"], strict=True)
        )
        for name in ("official", "ours_float32", "ours_float32_unoptimized")
    }
    max_diff = diffs["ours_float32"]
    inputs = {name: ((samples[0][1] - 127.5) / 127.5)[None].astype(np.float32) for name in paths}
    load = [round(v, 2) for v in os.getloadavg()]
    latency = {}
    for threads in args.threads:
        stats, ratios = interleaved_latency(
            paths, threads, inputs, rounds=args.rounds, per_round=args.per_round
        )
        latency[str(threads)] = {"stats": stats, "ratio_to_official": ratios}

    official_ops = op_counts(official)
    results = {
        "command": "python -m benchmarks.tflite_vs_official",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before_timing": load,
        },
        "input_size": SIZE,
        "num_images": len(samples),
        "official": {
            "path": str(official),
            "size_bytes": official.stat().st_size,
            "op_counts": official_ops,
        },
        "exports": exports,
        "float32_max_abs_logit_diff_vs_official": max_diff,
        "max_abs_logit_diff_vs_official": diffs,
        "float32_within_1e-4": max_diff <= 1e-4,
        "argmax_agreement_vs_official": {
            name: _agreement(logits[name], logits["official"]) for name in paths
        },
        "int8_argmax_agreement_vs_official": _agreement(logits["ours_int8"], logits["official"]),
        "int8_argmax_agreement_vs_ours_float32": _agreement(
            logits["ours_int8"], logits["ours_float32"]
        ),
        "miou": miou,
        "latency": latency,
        "timing": {
            "rounds": args.rounds,
            "per_round": args.per_round,
            "warmup": 20,
            "ratio": "median over rounds of (median ms of the file / median ms of the official "
            "file) in the same round; files interleaved, order rotating",
        },
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    print(f"\nJSON: {out}")
    return results


def _table(r):
    rows = [
        "| file | size (bytes) | ops | "
        + " | ".join(f"{t} thr median ms (ratio)" for t in r["latency"])
        + " | max abs logit diff vs official | argmax agreement vs official | VOC-8 mIoU |",
        "|---" * (6 + len(r["latency"])) + "|",
    ]
    sizes = {
        "official": r["official"]["size_bytes"],
        **{k: v["size_bytes"] for k, v in r["exports"].items()},
    }
    ops = {
        "official": r["official"]["op_counts"],
        **{k: v["op_counts"] for k, v in r["exports"].items()},
    }
    diffs = {name: "-" for name in sizes}
    diffs.update({k: f"{v:.2e}" for k, v in r["max_abs_logit_diff_vs_official"].items()})
    agree = {k: f"{v:.4f}" for k, v in r["argmax_agreement_vs_official"].items()}
    for name in sizes:
        cells = []
        for t in r["latency"]:
            stats = r["latency"][t]["stats"][name]
            ratio = r["latency"][t]["ratio_to_official"][name]
            cells.append(f"{stats['median_ms']:.2f} ({ratio:.3f})")
        rows.append(
            f"| {name} | {sizes[name]:,} | {sum(ops[name].values())} | "
            + " | ".join(cells)
            + f" | {diffs[name]} | {agree[name]} | {r['miou'][name]['miou']:.4f} |"
        )
    rows.append("")
    rows.append(
        f"int8 argmax agreement with ours float32: {r['int8_argmax_agreement_vs_ours_float32']:.4f}"
        f"; pixel accuracy: "
        + ", ".join(f"{k} {v['pixel_accuracy']:.4f}" for k, v in r["miou"].items())
    )
    rows.append("op counts: " + "; ".join(f"{k}: {v}" for k, v in ops.items()))
    rows.append(f"load average before timing: {r['machine']['load_average_before_timing']}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
