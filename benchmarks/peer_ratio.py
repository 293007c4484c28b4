"""Ours against keras-hub, interleaved round by round, in float32 and in bfloat16.

`benchmarks.run` times keras-hub and our DeepLabV3+ ResNet50 in separate processes, minutes
apart; on a shared host whose speed drifts, one such pair is only as firm as the drift (our
bfloat16 ratio read 2.69x and 3.88x in two runs of 2026-12-02, keras-hub's bfloat16 call 475
and 725 ms). Here two long-lived workers build their models once, ours in this environment
and keras-hub's `DeepLabV3ImageSegmenter` in `benchmarks/.venv-peers` (create it with
`bash benchmarks/setup_peers.sh`). For `--rounds` rounds the parent asks each worker in turn
(which one goes first alternates) for the median of `--reps` batch-1 calls of each precision,
and reports each round's ratio of achieved GFLOP/s, ours / keras-hub, and their median. Each
package runs its default inference path: ours `optimize_for_inference` (float32, and under
`mixed_bfloat16` for bfloat16; backends `keras_opt` / `keras_opt_bf16`), keras-hub's model
under the global policy `float32` / `mixed_bfloat16`. GFLOP per image: ours from
`keras_deeplab.count_macs`, keras-hub's from TF's graph profiler (see
`benchmarks.peer_kerashub_worker`). Random weights on both sides.

Run: `python -m benchmarks.peer_ratio [--size 512] [--rounds 6] [--reps 3] [--results STEM]`.
Writes `benchmarks/results/<STEM>.{json,md}` (default `peer_ratio`). Not a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks._common import (
    RESULT_TAG,
    RESULTS_DIR,
    header_line,
    percent,
    report_header,
    serve_timings,
    write_report,
)
from benchmarks.machine import machine_info
from benchmarks.plan import PEER_MODEL, PEER_SIZE
from benchmarks.workers import PEERS_PYTHON, REPO
from keras_deeplab._cpu_steal import cpu_times, steal_share

PRECISIONS = ("float32", "bfloat16")
OUR_BACKENDS = {"float32": "keras_opt", "bfloat16": "keras_opt_bf16"}
TARGETS = {"float32": 1.5, "bfloat16": 3.0}  # issue 17: ours / keras-hub achieved GFLOP/s


class TimingWorker:
    """A `serve_timings` subprocess: `time(variant, reps)` -> `{"median_ms", "best_ms"}`."""

    def __init__(self, label, command, python=None):
        self.label = label
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(python or sys.executable), *command],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self.meta = None

    def ready(self):
        """Waits for the worker's models; returns what it says about them."""
        self.meta = self._answer()
        return self.meta

    def time(self, variant, reps):
        self.proc.stdin.write(json.dumps({"variant": variant, "reps": reps}) + "\n")
        self.proc.stdin.flush()
        out = self._answer()
        if "error" in out:
            raise RuntimeError(f"{self.label} worker: {out['error']}")
        return out

    def _answer(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG) :])
        code = self.proc.wait()
        self.log.seek(0)
        tail = (self.log.read().strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {self.label} worker exited with code {code}: {tail[:300]}")

    def close(self):
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def serve_ours(model_name, size):
    """Worker side: our model's float32 and bfloat16 default inference paths, timed on request."""
    import keras_deeplab
    from benchmarks.backends import Backends, random_images

    model = keras_deeplab.create_model(model_name, num_classes=21)
    images = random_images(1, size)
    with tempfile.TemporaryDirectory() as workdir:
        backends = Backends(model, workdir)
        runs = {p: backends.runner(backend, size) for p, backend in OUR_BACKENDS.items()}
        runners = {p: (lambda run=run: run(images)) for p, run in runs.items()}
        meta = {
            "model": model_name,
            "backends": OUR_BACKENDS,
            "gflop_per_image": 2 * keras_deeplab.count_macs(model, (size, size)) / 1e9,
        }
        serve_timings(runners, meta)


def ratio_of(ours_gflop, ours_ms, peer_gflop, peer_ms):
    """Achieved GFLOP/s of ours over the peer's."""
    return (ours_gflop / ours_ms) / (peer_gflop / peer_ms)


def measure(ours, peer, rounds, reps):
    """Per-round timings and ratios of the two workers, first worker alternating."""
    records = []
    for index in range(rounds):
        ticks = cpu_times()
        order = (ours, peer) if index % 2 == 0 else (peer, ours)
        times = {w.label: {p: w.time(p, reps)["median_ms"] for p in PRECISIONS} for w in order}
        record = {"round": index + 1, "first": order[0].label, "steal": steal_share(ticks)}
        for p in PRECISIONS:
            record[p] = {
                "ours_ms": times["ours"][p],
                "keras_hub_ms": times["keras-hub"][p],
                "ratio": ratio_of(
                    ours.meta["gflop_per_image"],
                    times["ours"][p],
                    peer.meta["gflop_per_image"],
                    times["keras-hub"][p],
                ),
            }
        records.append(record)
        print(
            f"round {index + 1}/{rounds} ({order[0].label} first): "
            + "; ".join(
                f"{p} ours {record[p]['ours_ms']:.1f} ms, keras-hub "
                f"{record[p]['keras_hub_ms']:.1f} ms -> {record[p]['ratio']:.2f}x"
                for p in PRECISIONS
            )
            + f"; steal {percent(record['steal'])}",
            flush=True,
        )
    return records


def summary(records):
    out = {}
    for p in PRECISIONS:
        ratios = [r[p]["ratio"] for r in records]
        out[p] = {
            "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "target": TARGETS[p],
            "rounds_meeting_target": sum(ratio >= TARGETS[p] for ratio in ratios),
            "median_ours_ms": statistics.median(r[p]["ours_ms"] for r in records),
            "median_keras_hub_ms": statistics.median(r[p]["keras_hub_ms"] for r in records),
        }
    return out


def markdown(report):
    ours, peer = report["ours"], report["keras_hub"]
    lines = [
        f"# Ours against keras-hub at {report['size']}x{report['size']}, interleaved",
        "",
        header_line(report),
        f"Ours: `{ours['model']}`, `optimize_for_inference` (float32 / `mixed_bfloat16`), "
        f"{ours['gflop_per_image']:.1f} GFLOP per image. keras-hub "
        f"{peer['versions']['keras_hub']}: {peer['model']}, global policy float32 / "
        f"`mixed_bfloat16`, {peer['gflop_per_image']:.1f} GFLOP per image. Batch 1, random "
        f"weights; each cell the median of {report['reps']} calls; the ratio is of achieved "
        "GFLOP/s, ours / keras-hub.",
        "",
        "| round | first | fp32 ours ms | fp32 keras-hub ms | fp32 ratio | bf16 ours ms | "
        "bf16 keras-hub ms | bf16 ratio | steal |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rounds"]:
        f, b = r["float32"], r["bfloat16"]
        lines.append(
            f"| {r['round']} | {r['first']} | {f['ours_ms']:.1f} | {f['keras_hub_ms']:.1f} | "
            f"{f['ratio']:.2f}x | {b['ours_ms']:.1f} | {b['keras_hub_ms']:.1f} | "
            f"{b['ratio']:.2f}x | {percent(r['steal'])} |"
        )
    lines.append("")
    for p in PRECISIONS:
        s = report["summary"][p]
        lines.append(
            f"- {p}: median ratio **{s['median_ratio']:.2f}x** (rounds {s['min_ratio']:.2f}-"
            f"{s['max_ratio']:.2f}x; target {s['target']}x met in {s['rounds_meeting_target']} "
            f"of {len(report['rounds'])} rounds); median ours {s['median_ours_ms']:.1f} ms, "
            f"keras-hub {s['median_keras_hub_ms']:.1f} ms."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=PEER_SIZE)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--results", default="peer_ratio", help="results stem")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # the subprocess that holds our model
        task = json.loads(args.worker)
        serve_ours(task["model"], task["size"])
        return None
    if args.rounds < 1 or args.reps < 1 or args.size < 32:
        parser.error("--rounds and --reps must be >= 1 and --size >= 32")
    if not PEERS_PYTHON.exists():
        parser.exit(
            2,
            f"peer_ratio: {PEERS_PYTHON} not found: run `bash benchmarks/setup_peers.sh` to "
            "install keras-hub in its own environment.\n",
        )
    machine = machine_info()
    task = json.dumps({"model": PEER_MODEL, "size": args.size})
    ours = TimingWorker("ours", ["-m", "benchmarks.peer_ratio", "--worker", task])
    peer = TimingWorker(
        "keras-hub",
        ["-m", "benchmarks.peer_kerashub_worker", json.dumps({"kind": "serve", "size": args.size})],
        python=PEERS_PYTHON,
    )
    try:
        print("[peer_ratio] building both models (a few minutes on 2 cores)", flush=True)
        ours.ready()
        peer.ready()
        records = measure(ours, peer, args.rounds, args.reps)
    finally:
        ours.close()
        peer.close()
    report = {
        **report_header("benchmarks.peer_ratio", argv, machine),
        "size": args.size,
        "reps": args.reps,
        "ours": ours.meta,
        "keras_hub": peer.meta,
        "rounds": records,
        "summary": summary(records),
    }
    write_report(RESULTS_DIR / args.results, report, markdown(report))
    return report


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
