"""Subprocess side of the distributed / crash-resume training tests.

Usage (run from the repository root):
    python tests/training_worker.py mirrored OUT.json WORKDIR [micro|deeplab]
    python tests/training_worker.py multiworker INDEX PORT0 PORT1 WORKDIR OUT.npz
    python tests/training_worker.py resume RUNDIR STEPS OUT.npz [SLEEP_SECONDS]

`mirrored` must configure two logical CPU devices before TensorFlow initialises
its devices, which is why these run in their own process.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODE = sys.argv[1]
if MODE == "multiworker":
    _index, _port0, _port1 = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{_port0}", f"127.0.0.1:{_port1}"]},
            "task": {"type": "worker", "index": _index},
        }
    )

import tensorflow as tf  # noqa: E402

if MODE == "mirrored":
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_deeplab import create_model  # noqa: E402
from keras_deeplab.training import Trainer, make_strategy  # noqa: E402
from tests.training_helpers import config, micro_model, random_batches  # noqa: E402


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _train(build, cfg, strategy, data, eval_data=None):
    trainer = Trainer(build, cfg, strategy=strategy)
    result = trainer.fit(data, eval_data=eval_data)
    trainer.model.result = result
    return trainer.model


def mirrored(out, workdir, frozen_model):
    """Same global batch on one device and on MirroredStrategy over 2 logical CPUs."""
    default = tf.distribute.get_strategy()
    mirror = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = random_batches(0, num_batches=2, batch_size=4, size=33)
    report = {"replicas": mirror.num_replicas_in_sync}

    # 1. BatchNorm frozen (official fine_tune_batch_norm=False), no dropout: two steps.
    keras.utils.set_random_seed(0)
    if frozen_model == "deeplab":  # tiny DeepLab v3 (MobileNetV2 x0.5)

        def fresh():
            return create_model("deeplabv3_mobilenetv2_dm05", num_classes=3, dropout=0.0)

    else:

        def fresh():
            return micro_model(dropout=0.0)

    init = fresh().get_weights()

    def frozen_build():
        model = fresh()
        model.set_weights(init)
        return model

    frozen = {"fine_tune_batch_norm": False, "steps": 2}
    results = []
    for name, strategy in (("one", default), ("mirrored", mirror)):
        cfg = config(f"{workdir}/frozen_{name}", train=frozen)
        results.append(_train(frozen_build, cfg, strategy, data).get_weights())
    report["frozen_max_diff"] = _max_diff(*results)
    report["frozen_max_update"] = _max_diff(results[0], init)
    if frozen_model == "deeplab":
        with open(out, "w") as f:
            json.dump(report, f)
        return

    # 2. Micro model, BatchNorm fine-tuned and synchronised (momentum 0: moving = batch stats).
    keras.utils.set_random_seed(1)
    micro_init = micro_model(dropout=0.0, bn_momentum=0.0).get_weights()

    def micro():
        model = micro_model(dropout=0.0, bn_momentum=0.0)
        model.set_weights(micro_init)
        return model

    reference = micro()
    first_images = next(iter(data))[0]
    conv1 = keras.Model(reference.input, reference.get_layer("conv1").output)
    expected_mean = np.asarray(conv1(first_images)).mean(axis=(0, 1, 2))
    one_step = {"fine_tune_batch_norm": True, "sync_batch_norm": True, "steps": 1}
    models = {}
    for name, strategy, sync in (
        ("one", default, True),
        ("sync", mirror, True),
        ("unsync", mirror, False),
    ):
        cfg = config(
            f"{workdir}/bn_{name}",
            train={**one_step, "sync_batch_norm": sync},
            checkpoint={"tensorboard": True},
        )
        models[name] = _train(micro, cfg, strategy, data, random_batches(9, 3, batch_size=3))

    def replica_values(model, name="moving_mean"):
        variable = getattr(model.get_layer("conv1_BatchNorm"), name).value
        values = getattr(variable, "values", (variable,))
        return [np.asarray(v.numpy()) for v in values]

    report["one_mean_err"] = _max_diff(replica_values(models["one"]), [expected_mean])
    sync_means = replica_values(models["sync"])
    report["sync_mean_err"] = _max_diff(sync_means, [expected_mean] * len(sync_means))
    # Without synchronisation every replica normalises with its own half of the batch, but
    # the moving statistics are averaged: identical on both replicas.
    report["unsync_replicas"] = len(replica_values(models["unsync"]))
    spreads = []
    for model in (models["unsync"], models["sync"]):
        for name in ("moving_mean", "moving_variance"):
            values = replica_values(model, name)
            spreads.append(_max_diff(values[1:], values[:-1]))
    report["replica_spread"] = max(spreads)
    unsync_means = replica_values(models["unsync"])
    report["unsync_mean_err"] = _max_diff(unsync_means, [expected_mean] * len(unsync_means))
    report["unsync_vs_sync_variance"] = _max_diff(
        replica_values(models["unsync"], "moving_variance"),
        replica_values(models["sync"], "moving_variance"),
    )
    report["sync_max_diff"] = _max_diff(models["one"].get_weights(), models["sync"].get_weights())
    report["sync_max_update"] = _max_diff(models["one"].get_weights(), micro_init)
    report["miou"] = [models[k].result.metrics["miou"] for k in ("one", "sync")]
    with open(out, "w") as f:
        json.dump(report, f)


def multiworker(index, workdir, out):
    strategy = make_strategy("multi_worker")
    keras.utils.set_random_seed(0)
    cfg = config(
        f"{workdir}/run",
        train={"steps": 4, "batch_size": 4, "steps_per_epoch": 2, "strategy": "multi_worker"},
        checkpoint={"tensorboard": True},
    )
    trainer = Trainer(micro_model, cfg, strategy=strategy)
    result = trainer.fit(
        lambda seed: random_batches(seed, num_batches=2, batch_size=4),
        eval_data=random_batches(9, num_batches=3, batch_size=2),
    )
    np.savez(out, *trainer.model.get_weights())
    with open(out + ".json", "w") as f:
        json.dump(
            {
                "step": result.step,
                "is_chief": trainer.is_chief,
                "replicas": strategy.num_replicas_in_sync,
                "checkpoint": result.checkpoint,
                "miou": result.metrics["miou"],
                "log_dir": result.log_dir,
            },
            f,
        )


def resume(run_dir, steps, out, sleep):
    keras.utils.set_random_seed(0)
    cfg = config(
        run_dir, train={"steps": steps, "steps_per_epoch": 5}, checkpoint={"every_steps": 3}
    )

    def batches(seed):
        data = random_batches(seed, num_batches=5, batch_size=4)
        if sleep:

            def slow(images, masks):
                tf.py_function(lambda: time.sleep(sleep), [], [])
                return images, masks

            data = data.map(slow)
        return data

    trainer = Trainer(micro_model, cfg)
    result = trainer.fit(batches)
    np.savez(out, *trainer.model.get_weights())
    with open(out + ".json", "w") as f:
        json.dump({"step": result.step, "resumed_from": result.resumed_from}, f)


if __name__ == "__main__":
    if MODE == "mirrored":
        mirrored(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "micro")
    elif MODE == "multiworker":
        multiworker(_index, sys.argv[5], sys.argv[6])
    elif MODE == "resume":
        resume(
            sys.argv[2],
            int(sys.argv[3]),
            sys.argv[4],
            float(sys.argv[5]) if len(sys.argv) > 5 else 0,
        )
    else:
        raise SystemExit(f"unknown mode {MODE}")
