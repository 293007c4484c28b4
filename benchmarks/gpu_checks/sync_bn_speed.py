"""Synchronised BatchNorm: all-reduces in the traced train step, and step time of sync BN
against per-replica BN (moving statistics averaged) and frozen BN.

Usage:
    python -m benchmarks.gpu_checks.sync_bn_speed [--model deeplabv3plus_xception65]
        [--crop 513] [--per-replica-batch 4] [--steps 10]
    python -m benchmarks.gpu_checks.sync_bn_speed --count   # 2 logical CPUs, tiny model

`--count` counts the all-reduce ops (CollectiveReduceV2 / NcclAllReduce) of the step's
graph: sync BN adds one per BN layer forward and one backward (Keras' own sync path: 3 + 3).
"""

import argparse
import json
import tempfile
import time


def _collectives(trainer, batch):
    """All-reduce ops in the traced train step (its graph and the functions it calls)."""
    import tensorflow as tf

    step = trainer._train_step.get_concrete_function(batch, tf.constant(0, tf.int64))
    graph = step.graph.as_graph_def()
    ops = [node.op for node in graph.node]
    ops += [node.op for function in graph.library.function for node in function.node_def]
    return sum(op in ("CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce") for op in ops)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3plus_xception65")
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--per-replica-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--count", action="store_true")
    args = parser.parse_args()
    import tensorflow as tf

    if args.count:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        devices = ["/cpu:0", "/cpu:1"]
        args.model, args.crop, args.per_replica_batch, args.steps = (
            "deeplabv3_mobilenetv2_dm05",
            33,
            2,
            1,
        )
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    from keras_deeplab import create_model
    from keras_deeplab.training import Trainer, batch_norm_layers
    from tests.training_helpers import config, random_batches

    strategy = tf.distribute.MirroredStrategy(devices)
    batch = args.per_replica_batch * len(devices)
    result = {"devices": devices, "model": args.model}
    for mode, fine_tune, sync in (
        ("sync", True, True),
        ("per_replica", True, False),
        ("frozen", False, False),
    ):
        cfg = config(
            tempfile.mkdtemp(),
            model={"name": args.model},
            train={
                "steps": args.steps,
                "batch_size": batch,
                "fine_tune_batch_norm": fine_tune,
                "sync_batch_norm": sync,
            },
        )
        trainer = Trainer(lambda: create_model(args.model, num_classes=21), cfg, strategy=strategy)
        data = random_batches(0, args.steps, batch, size=args.crop, num_classes=21)
        start = time.perf_counter()
        trainer.fit(lambda seed, d=data: d)
        entry = {
            "seconds": time.perf_counter() - start,
            "bn_layers": len(batch_norm_layers(trainer.model)),
        }
        if args.count:
            first = next(iter(strategy.experimental_distribute_dataset(data)))
            entry["all_reduces_in_step"] = _collectives(trainer, first)
        result[mode] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
