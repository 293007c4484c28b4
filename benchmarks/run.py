"""One entry point for the speed benchmarks: inference, training, input pipeline, CRF, peers.

Run: `python -m benchmarks.run` (full, 46 min on the 2-core Xeon of the README's run) or
`--quick` (one small model at 129/257 px, about 3 min); `--models`, `--sizes`, `--backends`,
`--batches`, `--no-peers`, `--no-train` and `--out` narrow a run. Writes
`benchmarks/results/run.json`, `run.md` (every cell, skip reasons) and `run_summary.md` (the
README's compact tables); `run_quick.*` with `--quick`. Every measurement runs in its own
subprocess (`--worker`), so peak resident memory is per configuration and one model's memory
never slows the next.

Modules: `plan` (which cells, budgets, cost prediction), `backends` (how each backend runs a
model), `inference` / `training` / `crf` (the measurements), `machine` (CPU facts, matmul
peak), `workers` (one subprocess per task, the keras-hub peer), `report` (markdown from the
report dict), `_common` (data, timing, LiteRT helpers shared with the accuracy scripts).

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
  `tf.function`) in float32 (fused and Keras BatchNorm) and under `mixed_bfloat16`, peak RSS; input pipeline images/s (`train_pipeline` on CamVid JPEGs, crop
  513, batch 8) against what training consumes.
* dense CRF seconds per 513x513 image with 21 classes: one process, and `batch_crf` with
  all cores.
* latency against pixel count: exponent of the log-log fit over 257 -> 513 -> 1025.
* precision: the CPU's AMX / AVX512-BF16 flags and `keras_deeplab.precision`'s native choice
  (machine line); "Keras optimised" is the Segmenter's default float32 path and "+ bf16" its
  `precision="bfloat16"` path; the bf16 verdict (`verify_precision`: argmax agreement and
  mIoU of Google's DeepLabV3 MobileNetV2 weights on the 8 VOC samples, bf16 vs fp32),
  computed once per weights and reused from the previous JSON; keras-hub in fp32 and under
  `mixed_bfloat16` in the same run, inference and training.
* keras-hub `DeepLabV3ImageSegmenter` (ResNet50, P2 low-level features, 512x512, random
  weights) in `benchmarks/.venv-peers` (create with `bash benchmarks/setup_peers.sh`), vs our
  DeepLabV3+ resnet50 at 512.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR
from benchmarks.backends import BACKENDS
from benchmarks.machine import machine_info
from benchmarks.plan import PEER_MODEL, PEER_SIZE, build_plan
from benchmarks.report import render_markdown, render_summary
from benchmarks.workers import run_peer, run_task, run_worker
from keras_deeplab._cpu_steal import cpu_times, steal_share


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
    parser.add_argument(
        "--no-precision-check",
        action="store_true",
        help="skip the bf16 vs fp32 check on the VOC samples (cached in the JSON otherwise)",
    )
    parser.add_argument("--out", default=None, help="output stem (default results/run[_quick])")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return None

    started, ticks = time.perf_counter(), cpu_times()
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
    if not args.no_precision_check:  # bf16 vs fp32 verdict, once per weights (cached in JSON)
        report["precision_check"] = run_task(
            {"kind": "precision_check", "precision": "bfloat16", "cached": _previous(stem)}
        )
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
            report["peers_bf16"] = run_peer(
                {"kind": "infer", "size": PEER_SIZE, "precision": "bfloat16"}
            )
            report["peers"]["train"] = run_peer(
                {"kind": "train", "size": PEER_SIZE, "batch": 8, "steps": 3}
            )
            if "error" not in report["peers_bf16"]:
                report["peers_bf16"]["train"] = run_peer(
                    {
                        "kind": "train",
                        "size": PEER_SIZE,
                        "batch": 8,
                        "steps": 3,
                        "precision": "bfloat16",
                    }
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
                        "precision": precision,
                    }
                ),
            }
            for m, c, b, s in plan["train"]
            for fused, precision in TRAIN_VARIANTS
        ]
        report["pipeline"] = run_task({"kind": "pipeline", **plan["pipeline"]})
        report["crf"] = run_task({"kind": "crf", **plan["crf"]})
    report["peak"]["end"] = run_task({"kind": "peak", **plan["peak"]})
    peaks = [p["gflops"] for p in (report["peak"]["start"], report["peak"]["end"]) if "gflops" in p]
    report["peak"]["gflops"] = max(peaks) if peaks else float("nan")
    report["wall_minutes"] = (time.perf_counter() - started) / 60
    report["machine"]["cpu_steal_share"] = steal_share(ticks)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    markdown = render_markdown(report)
    Path(f"{stem}.md").write_text(markdown)
    Path(f"{stem}_summary.md").write_text(render_summary(report))
    print(markdown)
    return report


# Training step variants per model: fused BN (ours) and Keras' BN in float32, fused in bfloat16.
TRAIN_VARIANTS = ((True, "float32"), (False, "float32"), (True, "bfloat16"))


def _previous(stem):
    """The `precision_check` of the last run written to `stem`.json (the cached verdict)."""
    try:
        return json.loads(Path(f"{stem}.json").read_text()).get("precision_check")
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()
