"""Distributed training and crash-safe resume, in subprocesses (`tests/training_worker.py`).

* MirroredStrategy over 2 logical CPUs == one device with the same global batch
  (BatchNorm frozen, or fine-tuned and synchronised; a tiny DeepLab in the slow test).
* MultiWorkerMirroredStrategy, 2 local workers on 127.0.0.1: completes, identical weights,
  each worker decodes only its half of every global batch, and the weights equal a
  one-device run with the same global batches; a worker whose checkpoint directory is not
  the chief's makes every worker stop with one clear error.
* A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends with the
  same step count and bit-identical weights as an uninterrupted run.
"""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.training_helpers import fresh_env, run_python

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "training_worker.py"


def _run(args, timeout=180):
    return run_python([WORKER, *args], timeout)


def _start(args, log):
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        cwd=ROOT,
        env=fresh_env(),
        stdout=log,
        stderr=log,
    )


def _kill(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _weights(path):
    data = np.load(path)
    return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_mirrored_two_cpus_matches_one_device(tmp_path):
    _run(["mirrored", tmp_path / "report.json", tmp_path, "micro"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["replicas"] == 2
    # Frozen BatchNorm (fine_tune_batch_norm=False): two steps.
    assert report["frozen_max_update"] > 1e-3
    assert report["frozen_max_diff"] < 1e-6
    # Fine-tuned synchronised BatchNorm: moving mean == mean of the *global* batch on both
    # replicas. Without synchronisation each replica normalises with its half, and the
    # moving statistics are all-reduced: the same on both replicas (the mean of the halves'
    # means = the global mean; the variance differs from the global batch's).
    assert report["one_mean_err"] < 1e-5 and report["sync_mean_err"] < 1e-5
    assert report["unsync_replicas"] == 2 and report["replica_spread"] == 0.0
    assert report["unsync_mean_err"] < 1e-5 and report["unsync_vs_sync_variance"] > 1e-6
    assert report["sync_max_update"] > 1e-2 and report["sync_max_diff"] < 1e-5
    # Evaluation (3 batches of 3 split over 2 replicas, partial batches) == one device.
    assert report["miou"][0] == pytest.approx(report["miou"][1], abs=1e-6)
    # A shard-aware input function: one pipeline per CPU replica, the same batches and weights.
    assert report["sharded_one_mode"] is None
    assert report["sharded_mirrored_mode"] == "PER_REPLICA"
    assert report["sharded_same_examples"] and report["sharded_max_diff"] < 1e-5


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device_deeplab(tmp_path):
    """The same with a real (tiny) DeepLab v3, BatchNorm frozen (~25 s, mostly tracing)."""
    _run(["mirrored", tmp_path / "report.json", tmp_path, "deeplab"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["frozen_max_update"] > 1e-3 and report["frozen_max_diff"] < 1e-6


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow  # suite time: 18 s; MirroredStrategy and the SIGKILL resume stay in the default run
def test_multi_worker_two_local_workers(tmp_path):
    ports = _free_ports(2)
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [
        _start(["multiworker", i, *ports, tmp_path, tmp_path / f"w{i}.npz"], logs[i])
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        for worker in workers:
            worker.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("the multi-worker run did not finish within 300 s")
    finally:
        _kill(workers)
        for log in logs:
            log.close()
    for i, worker in enumerate(workers):
        assert worker.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    info = [json.loads((tmp_path / f"w{i}.npz.json").read_text()) for i in range(2)]
    assert [i["is_chief"] for i in info] == [True, False]
    assert all(i["step"] == 4 and i["replicas"] == 2 for i in info)
    assert info[0]["miou"] == info[1]["miou"]  # evaluation reduced over both workers
    assert info[0]["log_dir"] and info[1]["log_dir"] is None  # only the chief writes summaries
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    first, second = _weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # Input sharded before decoding: 2 epochs x 8 examples, each worker decodes its 2 of
    # every global batch of 4 (examples 0,1 / 2,3 of each), the one-device run all of them.
    decoded = [info[0]["decoded"], info[1]["decoded"]]
    assert len(decoded[0]) == len(decoded[1]) == 8
    assert {i % 4 for i in decoded[0]} == {0, 1} and {i % 4 for i in decoded[1]} == {2, 3}
    assert sorted(decoded[0] + decoded[1]) == sorted(info[0]["one_device_decoded"])
    for a, b in zip(first, _weights(tmp_path / "w0.npz.one_device.npz"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-4.index"]
    assert not [p for p in run.iterdir() if p.name.startswith(".worker")]  # temp dirs removed


def _run_workers(tmp_path, extra, name, timeout=300):
    ports = _free_ports(2)
    logs = [open(tmp_path / f"{name}{i}.log", "w") for i in range(2)]
    workers = [
        _start(["multiworker", i, *ports, tmp_path, tmp_path / f"{name}{i}", *extra], logs[i])
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the multi-worker run did not finish within {timeout} s")
    finally:
        _kill(workers)
        for log in logs:
            log.close()
    for i, worker in enumerate(workers):
        assert worker.returncode == 0, (tmp_path / f"{name}{i}.log").read_text()[-3000:]
    return [json.loads((tmp_path / f"{name}{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow  # suite time: 14 s; multi-worker training stays in the default suite
def test_multi_worker_resume_needs_one_shared_checkpoint_dir(tmp_path):
    """The chief finds ckpt-2 in its directory, worker 1 (another directory) finds none."""
    _run(["resume", tmp_path / "shared", 2, tmp_path / "seed.npz"])
    outcomes = [i["outcome"] for i in _run_workers(tmp_path, ["shared"], "mismatch")]
    for outcome in outcomes:
        assert "restored different training states (step per replica: [2, 0])" in outcome
        assert "checkpoint.dir must be one directory every worker reads" in outcome
    assert "restored nothing" in outcomes[1] and "shared/ckpt-2" in outcomes[0]


def _checkpointed(run_dir, step):
    pointer = run_dir / "checkpoint"
    return pointer.is_file() and f'ckpt-{step}"' in pointer.read_text()


def test_sigkill_mid_epoch_then_resume(tmp_path):
    """12 steps, 5 per epoch, checkpoints every 3 steps and at epoch ends."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    log = open(tmp_path / "reference.log", "w")
    uninterrupted = _start(["resume", reference, 12, tmp_path / "reference.npz"], log)
    slow = ["resume", run, 12, tmp_path / "resumed.npz", 0.25]
    victim = _start(slow, subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _checkpointed(run, 6):  # step 6 is the 1st step of epoch 2 (mid-epoch)
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 6 within 120 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        assert not (run / "ckpt-12.index").exists()
        _run(slow)  # the same command again
        uninterrupted.wait(timeout=120)
    finally:
        _kill([victim, uninterrupted])
        log.close()
    assert uninterrupted.returncode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    resumed = json.loads((tmp_path / "resumed.npz.json").read_text())
    assert resumed["step"] == 12
    resumed_from = int(resumed["resumed_from"].rsplit("-", 1)[1])
    assert 6 <= resumed_from < 12 and resumed_from % 5 != 0  # resumed inside an epoch
    # Deterministic data order, restored optimizer/LR/RNG state: bit-identical weights.
    for a, b in zip(
        _weights(tmp_path / "resumed.npz"), _weights(tmp_path / "reference.npz"), strict=True
    ):
        np.testing.assert_array_equal(a, b)
