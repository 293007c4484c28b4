"""Multi-GPU and multi-worker training with the same config.

One custom training loop serves every strategy (`keras_deeplab.training`):

* `--strategy mirrored`: all local GPUs (`tf.distribute.MirroredStrategy`); on a machine
  without GPUs, `--cpu-replicas N` splits the CPU into N logical devices to try it out.
  BatchNorm follows the recipe's `train.sync_batch_norm` (the VOC recipe synchronises it, the
  shapes demo's does not); the batch size is global.
* `--strategy multi_worker`: one process per machine, each started with the same command
  and its own `TF_CONFIG` (`{"cluster": {"worker": [...]}, "task": {"type": "worker",
  "index": i}}`); worker 0 (the chief) writes checkpoints and logs.
  `--launch-local-workers N` starts N workers on this machine (localhost ports) to try it.

    python examples/distributed_training.py --strategy mirrored --config configs/voc_deeplabv3plus_xception65.yaml
    python examples/distributed_training.py --strategy mirrored --cpu-replicas 2 --steps 4   # CPU demo
    python examples/distributed_training.py --launch-local-workers 2 --steps 4               # 2 processes

Without `--config` it trains the small shapes demo model (configs/shapes_demo.yaml).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch_local_workers(count, argv):
    """Runs this script `count` times with a localhost TF_CONFIG each; returns exit codes."""
    ports = _free_ports(count)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(count):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        command = [sys.executable, __file__, *argv, "--strategy", "multi_worker"]
        processes.append(subprocess.Popen(command, env=env))
    return [p.wait() for p in processes]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes_demo.yaml"))
    parser.add_argument(
        "--strategy", default="mirrored", choices=("auto", "mirrored", "multi_worker")
    )
    parser.add_argument("--cpu-replicas", type=int, default=0, help="logical CPU devices (no GPU)")
    parser.add_argument("--launch-local-workers", type=int, default=0, metavar="N")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size (global)")
    parser.add_argument("--crop-size", type=int, help="override data.crop_size")
    parser.add_argument("--out", default="runs/distributed", help="checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="more section.key=value overrides")
    args = parser.parse_args(argv)
    if args.launch_local_workers:
        rest, skip = [], False
        for item in argv:  # the same command minus --launch-local-workers N
            if skip or item.startswith("--launch-local-workers"):
                skip = not skip and item == "--launch-local-workers"
                continue
            rest.append(item)
        codes = launch_local_workers(args.launch_local_workers, rest)
        print(f"workers finished with exit codes {codes}")
        return 0 if not any(codes) else 1

    from keras_deeplab.training import make_strategy, train_from_config

    # --cpu-replicas: without GPUs, mirror over N logical CPU devices (train.cpu_replicas)
    strategy = make_strategy(args.strategy, cpu_replicas=args.cpu_replicas or 1)
    overrides = [f"checkpoint.dir={args.out}", f"train.strategy={args.strategy}"]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.crop_size:
        overrides.append(f"data.crop_size={args.crop_size}")
    print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replica(s)")
    result = train_from_config(args.config, overrides + list(args.overrides), strategy=strategy)
    print(f"trained to step {result.step}; checkpoint: {result.checkpoint}")
    if result.metrics:
        print(f"eval mIoU {result.metrics['miou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
