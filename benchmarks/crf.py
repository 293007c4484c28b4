"""Dense-CRF speed: seconds per image in one process, and with `batch_crf` over all cores."""

import os
import time

import numpy as np


def bench_crf(size=513, num_classes=21, images=4, seed=0, processes=None):
    """Dense CRF seconds per image on random images and probabilities (official v2 preset).

    Example: `bench_crf(size=33, images=2, processes=1)["serial_s_per_image"]`.
    """
    from keras_deeplab.crf import batch_crf, dense_crf

    rng = np.random.default_rng(seed)
    imgs, probs = [], []
    for _ in range(images):
        imgs.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        logits = rng.normal(0, 2, (size, size, num_classes)).astype(np.float32)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        probs.append((p / p.sum(-1, keepdims=True)).astype(np.float32))
    dense_crf(imgs[0], probs[0])  # warm-up (imports)
    start = time.perf_counter()
    for image, prob in zip(imgs, probs, strict=True):
        dense_crf(image, prob)
    serial = (time.perf_counter() - start) / images
    processes = processes or os.cpu_count() or 1
    start = time.perf_counter()
    batch_crf(imgs, probs, processes=processes)
    parallel = (time.perf_counter() - start) / images
    return {
        "size": size,
        "classes": num_classes,
        "images": images,
        "preset": "deeplabv2_resnet101 (10 iterations)",
        "serial_s_per_image": serial,
        "processes": processes,
        "parallel_s_per_image": parallel,
    }
