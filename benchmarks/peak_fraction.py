"""Fraction of the float32 matmul peak a model reaches, with the peak read beside every timing.

`benchmarks.run` reads the peak at the start and the end of a run of many minutes; on hosts
whose speed drifts (this 2-core machine type's 4096² float32 matmul read 154-311 GFLOP/s in
one day) a fraction against a peak read minutes away is only as firm as the drift. Here one
process alternates, for `--rounds` rounds: the matmul peak (best of 3 4096² products), then
the model (median of `--reps` batch-1 calls), and reports each round's fraction and their
median. Default: `deeplabv3plus_resnet50` at 513x513 through the default inference path
(`optimize_for_inference`, float32; backend `keras_opt` of `benchmarks.backends`).

Run: `python -m benchmarks.peak_fraction [--model NAME] [--size 513] [--rounds 8] [--reps 5]
[--backend keras_opt] [--versus keras]`; `--versus` also times the same model through a
second backend in every round (before the first one in even rounds, after it in odd ones) and
reports the per-round ratio. Writes `benchmarks/results/peak_fraction_<model>.{json,md}`. Not a
test.
"""

import argparse
import statistics
import tempfile

import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    header_line,
    percent,
    report_header,
    timed_calls,
    write_report,
)
from benchmarks.backends import BACKENDS, Backends, random_images
from benchmarks.machine import machine_info, matmul_peak
from keras_deeplab._cpu_steal import cpu_times, steal_share


def model_ms(run, images, reps):
    """Median and best ms of `reps` calls (after one warm call)."""
    run(images)
    return timed_calls(lambda: run(images), reps)


def measure(model_name, size, rounds, reps, backend, versus=None):
    import keras_deeplab

    model = keras_deeplab.create_model(model_name)
    gflop = 2 * keras_deeplab.count_macs(model, (size, size)) / 1e9
    with tempfile.TemporaryDirectory() as workdir:
        backends = Backends(model, workdir)
        run = backends.runner(backend, size)
        other = backends.runner(versus, size) if versus else None
        images = random_images(1, size)
        run(images)  # trace and warm up outside the rounds
        if other:
            other(images)
        records = []
        for index in range(rounds):
            ticks = cpu_times()
            peak = matmul_peak(4096, 3)["gflops"]
            versus_first = other is not None and index % 2 == 1  # no order bias
            if versus_first:
                versus_ms = model_ms(other, images, reps)[0]
            median_ms, best_ms = model_ms(run, images, reps)
            if other is not None and not versus_first:
                versus_ms = model_ms(other, images, reps)[0]
            record = {
                "round": index + 1,
                "peak_gflops": peak,
                "median_ms": median_ms,
                "best_ms": best_ms,
                "fraction": gflop / (median_ms / 1e3) / peak,
                "fraction_best": gflop / (best_ms / 1e3) / peak,
                "steal": steal_share(ticks),
            }
            if other is not None:
                record["versus_median_ms"] = versus_ms
                record["versus_ratio"] = versus_ms / median_ms
            records.append(record)
            print(
                f"round {index + 1}/{rounds}: peak {peak:.0f} GFLOP/s, {model_name} "
                f"{median_ms:.1f} ms (best {best_ms:.1f}) -> {record['fraction']:.1%} of the peak, "
                f"steal {percent(record['steal'])}"
                + (f"; {versus} {record['versus_median_ms']:.1f} ms" if other else ""),
                flush=True,
            )
    return gflop, records


def summary(records):
    fractions = [r["fraction"] for r in records]
    versus = {}
    if "versus_ratio" in records[0]:
        ratios = [r["versus_ratio"] for r in records]
        versus = {
            "median_versus_ratio": statistics.median(ratios),
            "rounds_backend_faster": sum(ratio > 1 for ratio in ratios),
        }
    return {
        **versus,
        "median_fraction": statistics.median(fractions),
        "min_fraction": min(fractions),
        "max_fraction": max(fractions),
        "median_fraction_best": statistics.median(r["fraction_best"] for r in records),
        "peak_range": [
            min(r["peak_gflops"] for r in records),
            max(r["peak_gflops"] for r in records),
        ],
        "model_ms_range": [
            min(r["median_ms"] for r in records),
            max(r["median_ms"] for r in records),
        ],
    }


def markdown(report):
    s = report["summary"]
    lines = [
        f"# Fraction of the float32 matmul peak: `{report['model']}` at {report['size']}",
        "",
        header_line(report),
        f"Backend `{report['backend']}`, batch 1, {report['gflop_per_image']:.1f} GFLOP per image "
        f"(2 x multiply-adds). Each round: the 4096² float32 matmul (best of 3), then the model "
        f"(median of {report['reps']} calls).",
        "",
        "| round | peak GFLOP/s | model ms (median) | model GFLOP/s | fraction | steal |"
        + (f" `{report['versus']}` ms | ratio |" if report["versus"] else ""),
        "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if report["versus"] else ""),
    ]
    for r in report["rounds"]:
        achieved = report["gflop_per_image"] / (r["median_ms"] / 1e3)
        lines.append(
            f"| {r['round']} | {r['peak_gflops']:.0f} | {r['median_ms']:.1f} | {achieved:.0f} | "
            f"{r['fraction']:.1%} | {percent(r.get('steal'))} |"
            + (
                f" {r['versus_median_ms']:.1f} | {r['versus_ratio']:.2f} |"
                if report["versus"]
                else ""
            )
        )
    lines += [
        "",
        f"**Median fraction {s['median_fraction']:.1%}** (rounds {s['min_fraction']:.1%}-"
        f"{s['max_fraction']:.1%}; with each round's best call instead of its median "
        f"{s['median_fraction_best']:.1%}). The peak read {s['peak_range'][0]:.0f}-"
        f"{s['peak_range'][1]:.0f} GFLOP/s and the model {s['model_ms_range'][0]:.1f}-"
        f"{s['model_ms_range'][1]:.1f} ms over the run.",
        "",
    ]
    if report["versus"]:
        lines += [
            f"`{report['versus']}` against `{report['backend']}`, timed beside it in each "
            f"round: median ratio **{s['median_versus_ratio']:.2f}** (`{report['backend']}` "
            f"faster in {s['rounds_backend_faster']} of {len(report['rounds'])} rounds).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3plus_resnet50")
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--backend", default="keras_opt", choices=BACKENDS)
    parser.add_argument(
        "--versus", default=None, choices=BACKENDS, help="also time this backend in every round"
    )
    parser.add_argument("--results", default=None, help="results stem under benchmarks/results")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.reps < 1 or args.size < 32:
        parser.error("--rounds and --reps must be >= 1 and --size >= 32")
    machine = machine_info()  # its load average is read before the rounds
    gflop, records = measure(
        args.model, args.size, args.rounds, args.reps, args.backend, args.versus
    )
    report = {
        **report_header("benchmarks.peak_fraction", argv, machine),
        "model": args.model,
        "size": args.size,
        "backend": args.backend,
        "versus": args.versus,
        "reps": args.reps,
        "gflop_per_image": gflop,
        "rounds": records,
        "summary": summary(records),
    }
    write_report(
        RESULTS_DIR / (args.results or f"peak_fraction_{args.model}"), report, markdown(report)
    )
    return report


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
