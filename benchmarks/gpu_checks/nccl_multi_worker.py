"""2 local workers, one GPU each: NCCL chosen by train.communication=auto, sharded input,
weights equal to a one-device run of the same global batches.

Usage: python -m benchmarks.gpu_checks.nccl_multi_worker [--workdir DIR]
Runs tests/training_worker.py multiworker (the CPU test's worker) with CUDA_VISIBLE_DEVICES
0 and 1, then compares as tests/test_training_distributed.py does.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(path):
    data = np.load(path)
    return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp())
    ports = _ports(2)
    workers = []
    for i in range(2):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i), "PYTHONPATH": str(ROOT)}
        env.pop("TF_CONFIG", None)
        command = [
            sys.executable,
            str(ROOT / "tests" / "training_worker.py"),
            "multiworker",
            str(i),
            *map(str, ports),
            str(workdir),
            str(workdir / f"w{i}.npz"),
        ]
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env))
    codes = [w.wait(timeout=900) for w in workers]
    info = [json.loads((workdir / f"w{i}.npz.json").read_text()) for i in range(2)]
    first = _weights(workdir / "w0.npz")
    one = _weights(workdir / "w0.npz.one_device.npz")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": str(ROOT)}
    probe = (
        "from keras_deeplab.training.distribute import communication_options as c; "
        "print(c('auto').implementation.name)"
    )
    implementation = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "exit_codes": codes,
        "communication_auto": implementation,
        "decoded_per_worker": [len(i["decoded"]) for i in info],
        "disjoint": not set(info[0]["decoded"]) & set(info[1]["decoded"]),
        "max_diff_vs_one_device": max(
            float(np.max(np.abs(a - b))) for a, b in zip(first, one, strict=True)
        ),
    }
    print(json.dumps(result))
    ok = codes == [0, 0] and implementation == "NCCL" and result["max_diff_vs_one_device"] < 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
