"""FusedBatchNormV3 in training mode on float16 / bfloat16 inputs (float32 scale and
statistics) against a float32 upcast of the same inputs: time and error.

Usage: python -m benchmarks.gpu_checks.fused_bn_half [--shape 8,129,129,256] [--steps 50]
On a GPU this is cuDNN's half path, which the fused BatchNorm takes there. On CPUs see
`benchmarks.bf16_batch_norm` (native bfloat16 at multiples of 16 channels).
"""

import argparse
import json
import time

import tensorflow as tf


def fused_batch_norm(x):
    """`(y, mean, variance)` of training-mode FusedBatchNormV3 with unit scale, zero offset."""
    channels = x.shape[-1]
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=tf.ones([channels]),
        offset=tf.zeros([channels]),
        mean=tf.zeros([0]),
        variance=tf.zeros([0]),
        epsilon=1e-3,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    )
    return y, mean, variance


def _step(x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, mean, variance = fused_batch_norm(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    return tape.gradient(loss, x), mean, variance


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,129,129,256")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    shape = [int(s) for s in args.shape.split(",")]
    x32 = tf.random.normal(shape, 1.0, 2.0)
    reference = _step(x32)
    result = {"device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU"}
    for name, dtype in (
        ("float32_upcast", tf.float32),
        ("float16", tf.float16),
        ("bfloat16", tf.bfloat16),
    ):
        x = (
            tf.cast(tf.cast(x32, dtype), tf.float32)
            if name == "float32_upcast"
            else tf.cast(x32, dtype)
        )
        step = tf.function(_step)
        grad, mean, variance = step(x)  # trace
        start = time.perf_counter()
        for _ in range(args.steps):
            grad, mean, variance = step(x)
        float(tf.reduce_sum(mean))  # sync
        result[name] = {
            "ms_per_step": 1e3 * (time.perf_counter() - start) / args.steps,
            "stat_dtype": mean.dtype.name,
            "max_mean_err": float(tf.reduce_max(tf.abs(mean - reference[1]))),
            "max_var_rel_err": float(tf.reduce_max(tf.abs(variance / reference[2] - 1))),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
