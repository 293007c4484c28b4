"""Every measurement in its own subprocess: the task runner, the worker side, the keras-hub peer.

A task is a JSON dict `{"kind": "peak" | "infer" | "train" | "pipeline" | "crf" |
"precision_check", ...}`;
`run_task` starts `python -m benchmarks.run --worker TASK`, whose `run_worker` prints one line
`BENCHMARK_RESULT:{json}` (with the process' peak RSS) that the parent reads back. One
process per task makes peak memory per configuration and keeps one model's memory from
slowing the next.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import RESULT_TAG, emit_result

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = Path(__file__).parent / ".venv-peers" / "bin" / "python"


def run_worker(task):
    """Runs one task in this process; prints the tagged JSON result."""
    kind = task["kind"]
    if kind == "peak":
        from benchmarks.machine import matmul_peak

        out = matmul_peak(task.get("n", 4096), task.get("reps", 6))
    elif kind == "infer":
        from benchmarks.inference import bench_inference

        out = bench_inference(
            task["model"],
            task["sizes"],
            task["backends"],
            tuple(task.get("batches", (1, 8))),
            task.get("limits"),
        )
    elif kind == "train":
        from benchmarks.training import bench_train

        out = bench_train(
            task["model"],
            task["crop"],
            task["batch"],
            task.get("steps", 3),
            fused_bn=task.get("fused_bn", True),
            precision=task.get("precision", "float32"),
        )
    elif kind == "pipeline":
        from benchmarks.training import bench_pipeline

        out = bench_pipeline(task["crop"], task["batch"], task.get("batches", 12))
    elif kind == "crf":
        from benchmarks.crf import bench_crf

        out = bench_crf(task["size"], images=task.get("images", 4))
    elif kind == "precision_check":
        from benchmarks.inference import precision_check

        out = precision_check(task.get("precision", "bfloat16"), task.get("cached"))
    else:
        raise ValueError(
            f"unknown task {kind!r}: expected peak, infer, train, pipeline, crf or precision_check"
        )
    emit_result(out)


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
    """One task in a fresh `python -m benchmarks.run --worker` process."""
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
            "keras-hub in its own environment (its dependencies stay out of the project's .venv)."
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
