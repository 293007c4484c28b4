"""Training on CPU replicas (`train.cpu_replicas`) against one device, in alternating fresh processes.

Each run trains the `shapes_demo` recipe for `--steps` steps without evaluation in its own
process (the CPU can only be split before TensorFlow starts), with `train.cpu_replicas` 1 and
N in turn, `--rounds` times. The figure is the time of the epochs after the first (tracing
and the first pipeline fill excluded), from the trainer's own epoch records; the whole run's
training time is kept beside it.

Run: `python -m benchmarks.cpu_replicas [--replicas 2] [--steps 256] [--rounds 2]
[--results NAME]`. Writes `benchmarks/results/<NAME>.{json,md}` (default `cpu_replicas`).
Not a test: the ratio depends on the machine and, on a shared cloud host, on its neighbours
(compare ratios of one report, never times across reports).
"""

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks._common import RESULTS_DIR, header_line, report_header, write_report
from benchmarks.machine import machine_info

CHILD = """
import json, sys, tempfile
import tensorflow as tf
from keras_deeplab.training.run import train_from_config
replicas, steps, extra = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
with tempfile.TemporaryDirectory() as run:
    result = train_from_config("shapes_demo", [
        f"checkpoint.dir={run}", f"train.cpu_replicas={replicas}", f"train.steps={steps}",
        "data.eval_split=null", "train.verbose=0", "checkpoint.tensorboard=false", *extra])
ends = [h["elapsed"] for h in result.history]
if len(ends) < 2:
    sys.exit("--steps must cover at least two epochs")
print("RESULT " + json.dumps({"cpu_devices": len(tf.config.list_logical_devices("CPU")),
    "training_s": result.elapsed, "after_first_s": ends[-1] - ends[0], "epochs": len(ends)}))
"""


def one_run(replicas, steps, extra=()):
    """Trains in a fresh process; returns its timings (raises with the child's stderr tail)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(replicas), str(steps), *extra],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"the run with {replicas} replica(s) failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def render(report):
    rows = [
        "# CPU replicas against one device (shapes_demo recipe)",
        "",
        header_line(report),
        "",
        f"{report['steps']} steps per run, runs alternating; seconds of training "
        "(all epochs after the first / whole run):",
        "",
        "| round | " + " | ".join(f"{n} replica(s)" for n in report["variants"]) + " |",
        "|---|" + "---|" * len(report["variants"]),
    ]
    for i, runs in enumerate(report["rounds"], 1):
        cells = [f"{r['after_first_s']:.1f} / {r['training_s']:.1f}" for r in runs]
        rows.append(f"| {i} | " + " | ".join(cells) + " |")
    rows += ["", f"Median speed-up of the epochs after the first: **{report['speedup']:.2f}x**."]
    return "\n".join(rows) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--steps", type=int, default=256, help="per run (64 make an epoch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", default="cpu_replicas", help="report name in results/")
    parser.add_argument("overrides", nargs="*", help="more section.key=value recipe overrides")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (it is compared with one device)")
    variants = (1, args.replicas)
    rounds = []
    for i in range(args.rounds):
        runs = [one_run(n, args.steps, args.overrides) for n in variants]
        if [r["cpu_devices"] for r in runs] != list(variants):
            raise RuntimeError(f"the CPU was not split as asked: {runs}")
        rounds.append(runs)
        print(f"round {i + 1}/{args.rounds}: {rounds[-1]}", flush=True)
    ratios = [one["after_first_s"] / split["after_first_s"] for one, split in rounds]
    report = {
        **report_header("benchmarks.cpu_replicas", argv, machine_info()),
        "steps": args.steps,
        "variants": list(variants),
        "rounds": rounds,
        "speedup": statistics.median(ratios),
    }
    write_report(RESULTS_DIR / args.results, report, render(report))
    return report


if __name__ == "__main__":
    main()
