"""Subprocess side of the distributed / crash-resume training tests.

Usage (run from the repository root):
    python tests/training_worker.py mirrored OUT.json WORKDIR [micro|deeplab]
    python tests/training_worker.py replicas OUT.json WORKDIR
    python tests/training_worker.py multiworker INDEX PORT0 PORT1 WORKDIR OUT.npz [RUN_NAME]
    python tests/training_worker.py resume RUNDIR STEPS OUT.npz [SLEEP_SECONDS]

`mirrored` and `replicas` configure two logical CPU devices before TensorFlow initialises
its devices, which is why these run in their own process. `multiworker` with RUN_NAME
trains in WORKDIR/RUN_NAME (worker 1 in WORKDIR/RUN_NAME_private: a checkpoint directory
that is not shared) and writes the error to OUT.npz.json.
"""

import json
import os
import sys
import time
import warnings

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

if MODE in ("mirrored", "replicas"):
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_deeplab import create_model  # noqa: E402
from keras_deeplab.training import Trainer, make_strategy  # noqa: E402
from keras_deeplab.training.trainer import build_with_policy  # noqa: E402
from tests.training_helpers import config, fixed_micro_model, micro_model, random_batches  # noqa: E402

DECODED = []  # indices of the examples this process "decoded" (sharded_batches)


def sharded_batches(seed, skip_batches=0, shard=None, num_batches=2, batch_size=4):
    """`random_batches` as a shard-aware pipeline: examples are filtered by shard *before*
    a py_function that stands for decoding and records each index in DECODED."""
    images, masks = (
        np.concatenate([t.numpy() for t in part])
        for part in zip(*random_batches(seed, num_batches, batch_size), strict=True)
    )
    data = tf.data.Dataset.range(len(images)).skip(skip_batches * batch_size)
    per = batch_size
    if shard is not None:
        count, index = shard
        per = batch_size // count
        data = data.filter(lambda i: (i % batch_size) // per == index)

    def decode(i):
        DECODED.append(int(i))
        return images[int(i)], masks[int(i)]

    def load(i):
        image, mask = tf.numpy_function(decode, [i], [tf.float32, tf.int32])
        return tf.ensure_shape(image, images.shape[1:]), tf.ensure_shape(mask, masks.shape[1:])

    return data.map(load).batch(per, drop_remainder=True)


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

    # 3. A shard-aware input function on CPU replicas: one pipeline per replica, on its own
    # device (Trainer._input_options), the same global batches as one device.
    build = fixed_micro_model()
    train = {"steps": 4, "batch_size": 4, "steps_per_epoch": 2}
    weights, decoded = [], []
    for name, strategy in (("one", default), ("mirrored", mirror)):
        DECODED.clear()
        trainer = Trainer(build, config(f"{workdir}/sharded_{name}", train=train), strategy)
        options = trainer._input_options()
        report[f"sharded_{name}_mode"] = options and options.experimental_replication_mode.name
        trainer.fit(sharded_batches)
        weights.append(trainer.model.get_weights())
        decoded.append(sorted(DECODED))
    report["sharded_max_diff"] = _max_diff(*weights)
    report["sharded_same_examples"] = decoded[0] == decoded[1] and len(decoded[0]) == 16
    with open(out, "w") as f:
        json.dump(report, f)


def replicas(out, workdir):
    """float16 overflow on one replica, batch checks, dropout seeds, op determinism."""
    mirror = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {}

    # 1. float16: replica 1's scaled gradients overflow (its image x100), replica 0's do not.
    x, y = (t.numpy() for t in next(iter(random_batches(0, num_batches=1, batch_size=2))))
    overflow = x.copy()
    overflow[1] *= 100.0
    data = tf.data.Dataset.from_tensor_slices(((np.stack([overflow, x])), np.stack([y, y])))
    keras.utils.set_random_seed(0)
    with mirror.scope():
        model = build_with_policy(lambda: micro_model(dropout=0.0), "mixed_float16")
    init = model.get_weights()
    cfg = config(
        f"{workdir}/fp16", train={"steps": 1, "batch_size": 2, "fine_tune_batch_norm": False}
    )
    trainer = Trainer(model, cfg, strategy=mirror)
    report["fp16_initial_scale"] = trainer.loss_scale
    first = trainer.fit(lambda seed: data.take(1))
    report["fp16_loss_finite"] = bool(np.isfinite(first.loss))
    report["fp16_weights_finite"] = all(bool(np.isfinite(w).all()) for w in model.get_weights())
    report["fp16_change_after_overflow"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(model.get_weights(), init, strict=True)
    )
    report["fp16_scale_after_overflow"] = trainer.loss_scale
    report["fp16_iterations_after_overflow"] = int(trainer.optimizer.iterations.numpy())
    # The same trainer, one more (finite) step: applied on both replicas.
    trainer.config = config(
        f"{workdir}/fp16", train={"steps": 2, "batch_size": 2, "fine_tune_batch_norm": False}
    )
    trainer.fit(lambda seed: data.skip(1).take(1))
    report["fp16_iterations_after_finite"] = int(trainer.optimizer.iterations.numpy())
    report["fp16_change_after_finite"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(model.get_weights(), init, strict=True)
    )
    replica_kernels = model.get_layer("conv1").kernel.value.values
    report["fp16_replica_spread"] = float(
        np.max(np.abs(replica_kernels[0].numpy() - replica_kernels[1].numpy()))
    )

    # 2. Batch checks.
    for batch, key in ((1, "batch_1"), (3, "batch_3")):
        cfg = config(f"{workdir}/batch{batch}", train={"batch_size": batch})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                Trainer(micro_model, cfg, strategy=mirror)
                report[key] = "ok"
            except ValueError as error:
                report[key] = f"error: {error}"
        report[key + "_warnings"] = [str(w.message) for w in caught if "replicas" in str(w.message)]
    trainer = Trainer(micro_model, config(f"{workdir}/batch_data"), strategy=mirror)
    try:
        trainer.fit(lambda seed: random_batches(seed, num_batches=2, batch_size=1))
        report["data_batch_1"] = "ok"
    except ValueError as error:
        report["data_batch_1"] = f"error: {error}"

    # 3. Dropout: replica 1 draws other masks than replica 0 (which keeps the seed stream).
    keras.utils.set_random_seed(3)
    cfg = config(f"{workdir}/dropout", train={"steps": 1})
    trainer = Trainer(lambda: micro_model(dropout=0.5), cfg, strategy=mirror)
    initial = [np.asarray(v.value.values[0].numpy()) for v in trainer._seed_states]
    trainer.fit(lambda seed: random_batches(seed, num_batches=1))
    states = [
        [np.asarray(c.numpy()).tolist() for c in v.value.values] for v in trainer._seed_states
    ]
    report["seed_states"] = states
    report["seed_initial"] = [s.tolist() for s in initial]

    # 4. train.deterministic: op determinism on, a step runs (process-wide, so last).
    cfg = config(f"{workdir}/deterministic", train={"steps": 1, "deterministic": True})
    result = Trainer(micro_model, cfg, strategy=mirror).fit(lambda s: random_batches(s, 1))
    report["deterministic_loss_finite"] = bool(np.isfinite(result.loss))
    with open(out, "w") as f:
        json.dump(report, f)


def multiworker(index, workdir, out, run_name=None):
    strategy = make_strategy("multi_worker")
    build = fixed_micro_model()
    train = {"steps": 4, "batch_size": 4, "steps_per_epoch": 2, "strategy": "multi_worker"}
    if run_name is not None:  # worker 1 without the chief's checkpoint directory
        run = f"{workdir}/{run_name}" + ("_private" if index == 1 else "")
        trainer = Trainer(build, config(run, train={**train, "steps": 6}), strategy=strategy)
        try:
            trainer.fit(sharded_batches)
            outcome = "trained"
        except ValueError as error:
            outcome = str(error)
        with open(out + ".json", "w") as f:
            json.dump({"outcome": outcome}, f)
        return
    cfg = config(f"{workdir}/run", train=train, checkpoint={"tensorboard": True})
    trainer = Trainer(build, cfg, strategy=strategy)
    result = trainer.fit(sharded_batches, eval_data=random_batches(9, num_batches=3, batch_size=2))
    np.savez(out, *trainer.model.get_weights())
    report = {
        "step": result.step,
        "is_chief": trainer.is_chief,
        "replicas": strategy.num_replicas_in_sync,
        "checkpoint": result.checkpoint,
        "miou": result.metrics["miou"],
        "log_dir": result.log_dir,
        "decoded": list(DECODED),
    }
    if index == 0:  # the same global batches on one device, in this process
        DECODED.clear()
        one = Trainer(
            build,
            config(f"{workdir}/one_device", train={**train, "strategy": "default"}),
            strategy=tf.distribute.get_strategy(),
        )
        one.fit(sharded_batches)
        np.savez(out + ".one_device.npz", *one.model.get_weights())
        report["one_device_decoded"] = list(DECODED)
    with open(out + ".json", "w") as f:
        json.dump(report, f)


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
    elif MODE == "replicas":
        replicas(sys.argv[2], sys.argv[3])
    elif MODE == "multiworker":
        multiworker(_index, sys.argv[5], sys.argv[6], sys.argv[7] if len(sys.argv) > 7 else None)
    elif MODE == "resume":
        resume(
            sys.argv[2],
            int(sys.argv[3]),
            sys.argv[4],
            float(sys.argv[5]) if len(sys.argv) > 5 else 0,
        )
    else:
        raise SystemExit(f"unknown mode {MODE}")
