"""bfloat16 BatchNorm on the CPU: the fused kernel on bfloat16 activations against a float32 copy.

`keras_deeplab.layers.BatchNormalization` feeds bfloat16 activations to `FusedBatchNormV3` as
they are on a CPU with a bfloat16 unit when the channel count is a multiple of 16, and a
float32 copy otherwise. This measures both halves of that rule, in one process:

1. the kernel alone, forward and gradient (then a ReLU, as in the models), per channel count:
   float32, bfloat16 through a float32 copy ("cast"), bfloat16 as it is ("native");
2. whole training steps (Adam, batch of random images) of a few models under
   `mixed_bfloat16` with the rule (native where it applies) and with every BatchNorm on a
   float32 copy, beside the float32 step; the variants alternate within each round.

Run: `python -m benchmarks.bf16_batch_norm [--channels 8 16 24 ...] [--models
deeplabv3plus_resnet50:257:2 ...] [--rounds 4] [--results NAME]`. Writes
`benchmarks/results/<NAME>.{json,md}` (default `bf16_batch_norm`). Not a test; the numbers mean
something only on a CPU with `amx_bf16` or `avx512_bf16` (read in the report's machine line).
"""

import argparse
import statistics
import time

from benchmarks._common import (
    RESULTS_DIR,
    header_line,
    report_header,
    timed_calls,
    train_step_fn,
    write_report,
)
from benchmarks.machine import machine_info

CHANNELS = (8, 12, 16, 24, 32, 48, 64, 72, 96, 120, 128, 144, 192, 256, 288, 480, 512)
# name:crop:batch; models whose BatchNorms mostly have 16k channels, and the CPU demo's model.
MODELS = (
    "deeplabv3plus_resnet50:257:2",
    "deeplabv3plus_xception65:257:2",
    "segnet:128:4",
    "demo:97:32",
)
VARIANTS = ("float32", "bf16_cast", "bf16_native")


def _bn_relu_step(cast):
    import tensorflow as tf

    from benchmarks.gpu_checks.fused_bn_half import fused_batch_norm

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fused_batch_norm(tf.cast(x, tf.float32) if cast else x)[0]
            loss = tf.reduce_sum(tf.cast(tf.nn.relu(tf.cast(y, x.dtype)), tf.float32))
        return tape.gradient(loss, x)

    return step


def _with_ratios(row, label, digits):
    """`row` (ms per variant) with the native / copy and native / float32 ratios; prints it."""
    row["native_over_cast"] = row["bf16_native"] / row["bf16_cast"]
    row["native_over_float32"] = row["bf16_native"] / row["float32"]
    times = ", ".join(f"{v} {row[v]:{digits}}" for v in VARIANTS)
    print(f"  {label}: {times} ms", flush=True)
    return row


def kernel_sweep(channels, shape=(32, 25, 25), reps=7):
    """Median ms of BatchNorm forward + gradient per channel count and variant."""
    import tensorflow as tf

    plain, cast = _bn_relu_step(False), _bn_relu_step(True)
    rows = []
    for c in channels:
        x32 = tf.random.normal((*shape, c))
        x16 = tf.cast(x32, tf.bfloat16)
        row = {"channels": c}
        for variant, fn, x in (
            ("float32", plain, x32),
            ("bf16_cast", cast, x16),
            ("bf16_native", plain, x16),
        ):
            fn(x)  # trace and warm up

            def call(fn=fn, x=x):
                fn(x).numpy()

            row[variant] = timed_calls(call, reps)[0]
        rows.append(_with_ratios(row, f"{c:4d} channels", ".2f"))
    return {"shape": list(shape), "rows": rows}


def _train_step(spec, precision, native, images, labels):
    """A traced Adam step of `spec` ("name:crop:batch") built under `precision`, with
    BatchNorm's native-bfloat16 rule on (`native`) or every BatchNorm on a float32 copy."""
    import keras

    import keras_deeplab
    import keras_deeplab.layers as layers
    from keras_deeplab.precision import dtype_policy
    from keras_deeplab.training.trainer import build_with_policy

    name, options = spec.split(":")[0], {}
    if name == "demo":  # the model of `make demo`, as its recipe builds it
        from keras_deeplab.demo import demo_recipe
        from keras_deeplab.training import load_config

        demo = load_config(demo_recipe()).model
        name, options = demo.name, dict(demo.options)
        if demo.output_stride is not None:
            options["output_stride"] = demo.output_stride
    model = build_with_policy(
        lambda: keras_deeplab.create_model(name, num_classes=5, **options),
        dtype_policy(precision),
    )
    step = train_step_fn(model, keras.optimizers.Adam(1e-4))

    rule = layers._keeps_half_inputs
    layers._keeps_half_inputs = rule if native else (lambda dtype, channels: False)
    try:  # the rule is read while tracing: the traced graph keeps the choice
        step(images, labels).numpy()
    finally:
        layers._keeps_half_inputs = rule
    return step


def train_steps(specs, rounds, steps_per_round=2):
    """Median ms per training step of each model in each variant, alternating per round."""
    import tensorflow as tf

    results = []
    for spec in specs:
        _, crop, batch = spec.split(":")
        crop, batch = int(crop), int(batch)
        images = tf.random.uniform((batch, crop, crop, 3), 0, 255, seed=1)
        labels = tf.random.uniform((batch, crop, crop), 0, 5, tf.int32, seed=2)
        fns = {
            "float32": _train_step(spec, "float32", False, images, labels),
            "bf16_cast": _train_step(spec, "bfloat16", False, images, labels),
            "bf16_native": _train_step(spec, "bfloat16", True, images, labels),
        }
        samples = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                for _ in range(steps_per_round):
                    start = time.perf_counter()
                    fns[variant](images, labels).numpy()
                    samples[variant].append(1e3 * (time.perf_counter() - start))
        row = {"model": spec, **{v: statistics.median(samples[v]) for v in VARIANTS}}
        results.append(_with_ratios(row, spec, ".0f"))
    return results


def render(report):
    lines = [
        "# bfloat16 BatchNorm on the CPU: native kernel against a float32 copy",
        "",
        header_line(report),
        "",
        f"## FusedBatchNormV3 forward + gradient + ReLU, batch {report['kernels']['shape']}",
        "",
        "| channels | float32 ms | bf16 via float32 copy ms | bf16 native ms | native / copy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in report["kernels"]["rows"]:
        lines.append(
            f"| {r['channels']} | {r['float32']:.2f} | {r['bf16_cast']:.2f} | "
            f"{r['bf16_native']:.2f} | {r['native_over_cast']:.2f}x |"
        )
    lines += [
        "",
        f"## Training steps (Adam, random images; median of {report['rounds']} alternating rounds)",
        "",
        "| model:crop:batch | float32 ms | bf16, every BN on a copy ms | bf16, native rule ms "
        "| native / copy | native / float32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["train_steps"]:
        lines.append(
            f"| {r['model']} | {r['float32']:.0f} | {r['bf16_cast']:.0f} | "
            f"{r['bf16_native']:.0f} | {r['native_over_cast']:.2f}x | "
            f"{r['native_over_float32']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="*", default=list(CHANNELS))
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(MODELS),
        help="name:crop:batch; a registered model name, or demo (the model of `make demo`)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--results", default="bf16_batch_norm", help="results file stem")
    args = parser.parse_args(argv)
    for spec in args.models:
        if len(spec.split(":")) != 3:
            parser.error(f"--models {spec!r}: expected name:crop:batch, e.g. segnet:128:4")
    machine = machine_info()
    print("BatchNorm kernels:", flush=True)
    kernels = kernel_sweep(args.channels)
    print("training steps:", flush=True)
    steps = train_steps(args.models, args.rounds)
    report = {
        **report_header("benchmarks.bf16_batch_norm", argv, machine),
        "rounds": args.rounds,
        "kernels": kernels,
        "train_steps": steps,
    }
    write_report(RESULTS_DIR / args.results, report, render(report))
    return report


if __name__ == "__main__":
    main()
