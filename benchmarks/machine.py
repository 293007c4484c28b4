"""What the machine is and what it can do: CPU/ISA/versions, and the fp32 matmul peak."""

import datetime
import math
import os
import platform
import time
from pathlib import Path


def matmul_peak(n=4096, reps=6):
    """fp32 matmul GFLOP/s: best of `reps` `n x n @ n x n` products in a `tf.function`.

    Example: `matmul_peak(256, 2)["gflops"]` -> a positive float.
    """
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


def machine_info():
    """CPU model and vector extensions (AMX / AVX512-BF16 included), cores, memory,
    Python/TF/Keras versions, date, load, and `keras_deeplab.precision`'s native choice."""
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
        for f in (
            "avx2",
            "fma",
            "avx512f",
            "avx512_vnni",
            "avx512_bf16",
            "amx_bf16",
            "amx_int8",
            "amx_tile",
        )
        if f" {f}" in flags
    ]
    from keras_deeplab.precision import native_precision, native_reason
    from keras_deeplab.training.distribute import usable_cores

    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu": cpu,
        "isa": isa,
        "cores": usable_cores(),
        "memory_gib": None if memory_gib is None else round(memory_gib, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
        "native_precision": native_precision(),
        "native_precision_reason": native_reason(),
    }
