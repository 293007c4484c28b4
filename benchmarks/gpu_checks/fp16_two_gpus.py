"""float16 on 2 GPUs: a step whose scaled gradients overflow on GPU 1 only is skipped on both.

Usage: python -m benchmarks.gpu_checks.fp16_two_gpus [--workdir DIR]
Needs 2 GPUs; runs the same check as tests/test_training_replicas.py on real devices with
train.precision=float16 (Keras LossScaleOptimizer, dynamic scale 32768).
"""

import argparse
import json
import sys
import tempfile

import numpy as np
import tensorflow as tf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        raise SystemExit(f"needs 2 GPUs, found {len(gpus)}")
    from keras_deeplab.training import Trainer
    from tests.training_helpers import config, micro_model, random_batches

    workdir = args.workdir or tempfile.mkdtemp()
    strategy = tf.distribute.MirroredStrategy([g.name for g in gpus[:2]])
    x, y = (t.numpy() for t in next(iter(random_batches(0, num_batches=1, batch_size=2))))
    bad = x.copy()
    bad[1] *= 100.0  # GPU 1's image: its float16 gradients x 32768 overflow
    data = tf.data.Dataset.from_tensor_slices((bad[None], y[None]))
    cfg = config(
        workdir,
        train={"steps": 1, "batch_size": 2, "precision": "float16", "fine_tune_batch_norm": False},
    )
    trainer = Trainer(lambda: micro_model(dropout=0.0), cfg, strategy=strategy)
    before = trainer.model.get_weights()
    trainer.fit(lambda seed: data)
    after = trainer.model.get_weights()
    result = {
        "finite": all(bool(np.isfinite(w).all()) for w in after),
        "unchanged": all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)),
        "loss_scale": trainer.loss_scale,
        "iterations": int(trainer.optimizer.iterations.numpy()),
    }
    print(json.dumps(result))
    ok = result["finite"] and result["unchanged"] and result["loss_scale"] == 16384.0
    sys.exit(0 if ok and result["iterations"] == 0 else 1)


if __name__ == "__main__":
    main()
