"""Faults (issue 8): SIGKILL inside a checkpoint write, full disks, interrupted exports.

* A writer SIGKILLed inside a checkpoint save (during the shard write, or with the files
  complete but before the pointer update) leaves the previous checkpoint loadable, and the
  next save of that step works.
* A full disk (`OSError(ENOSPC)` raised inside the write, or TensorFlow's "No space left
  on device") during a checkpoint or an export is one clear `DiskFullError` (an `OSError`
  with errno ENOSPC) naming the target; everything written before is intact and the
  partial files are removed.
* An export SIGKILLed mid-write (TFLite, SavedModel) leaves nothing at the target path (or
  the previous artefact unchanged); only hidden temporaries, which the next write removes.

The child processes are tests/hardening_child.py.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import gen_io_ops

from keras_deeplab.export.report import DiskFullError, atomic_write_bytes
from keras_deeplab.training.checkpoint import TrainingCheckpoint
from tests.hardening_child import tiny_training_state

ROOT = Path(__file__).resolve().parents[1]


def _kill_inside(mode, target, point, tmp_path, timeout=120):
    """Runs the child until it reaches `point`, then SIGKILLs it; returns its exit code."""
    marker = tmp_path / f"{mode}-{point}.marker"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.hardening_child", mode, str(target), point, str(marker)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"child ended early:\n{child.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child did not reach {point!r} in {timeout}s")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    code = child.wait(30)
    child.stdout.close()
    return code


def _values(model):
    return [np.asarray(v) for v in model.weights]


# ------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("point", ["shards", "pointer"])
def test_sigkill_inside_checkpoint_write_keeps_previous_loadable(point, tmp_path):
    run = tmp_path / "run"
    assert _kill_inside("checkpoint", run, point, tmp_path) == -signal.SIGKILL
    if point == "shards":
        assert (run / "ckpt-2_temp").is_dir() and not (run / "ckpt-2.index").exists()
    else:
        assert (run / "ckpt-2.index").exists()  # complete files, but not recorded
    model, optimizer = tiny_training_state(0.0)
    ckpt = TrainingCheckpoint(run, model, optimizer)
    assert ckpt.restore() == str(run / "ckpt-1")
    assert all((v == 1.0).all() for v in _values(model))  # step 1's values, not step 2's
    assert int(ckpt.step.numpy()) == 1
    # training goes on: the same step is saved again over the leftovers
    for variable in model.weights:
        variable.assign(variable * 3.0)
    assert ckpt.save(2, 0, 0, 10) == str(run / "ckpt-2")
    fresh, fresh_optimizer = tiny_training_state(0.0)
    assert TrainingCheckpoint(run, fresh, fresh_optimizer).restore() == str(run / "ckpt-2")
    assert all((v == 3.0).all() for v in _values(fresh))


def _enospc_in_merge(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _tf_enospc_in_pointer(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "checkpoint.tmp; No space left on device")


@pytest.mark.parametrize(
    "module, name, patch",
    [
        # inside the data write: shards are on disk in ckpt-2_temp/, the merge fails
        (gen_io_ops, "merge_v2_checkpoints", _enospc_in_merge),
        # files complete, the pointer update fails (TensorFlow's error type)
        (checkpoint_management, "update_checkpoint_state_internal", _tf_enospc_in_pointer),
    ],
    ids=["data", "pointer"],
)
def test_full_disk_during_checkpoint_is_clear_and_loses_nothing(
    module, name, patch, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    model, optimizer = tiny_training_state(1.0)
    ckpt = TrainingCheckpoint(run, model, optimizer, max_to_keep=1)
    ckpt.save(1, 0, 0, 10)
    for variable in model.weights:
        variable.assign(variable * 2.0)
    with monkeypatch.context() as patched:
        patched.setattr(module, name, patch)
        with pytest.raises(DiskFullError) as info:
            ckpt.save(2, 0, 0, 10)
    error = info.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    message = str(error)
    assert f"checkpoint step 2 in {run}: no space left on device" in message
    assert f"the previous checkpoint {run / 'ckpt-1'} is intact" in message
    assert "Fix: free disk space" in message and "\n" not in message
    # nothing of step 2 is left, step 1 (max_to_keep=1!) was not swept
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint",
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
    ]
    restored, restored_optimizer = tiny_training_state(0.0)
    assert TrainingCheckpoint(run, restored, restored_optimizer).restore() == str(run / "ckpt-1")
    assert all((v == 1.0).all() for v in _values(restored))
    # once space is back the same object saves normally
    assert ckpt.save(2, 0, 0, 10) == str(run / "ckpt-2")


def test_full_disk_message_through_the_cli(tmp_path, capsys, monkeypatch):
    """The CLI prints a DiskFullError as one line (exit 2), without a traceback."""
    from keras_deeplab import cli

    def train(config, overrides):
        raise DiskFullError("runs/x: no space left on device; ... Fix: free disk space")

    monkeypatch.setattr("keras_deeplab.training.train_from_config", train)
    assert cli.main(["train", "--config", "whatever.yaml"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "keras-deeplab: error: runs/x: no space left on device; ... Fix: free disk space\n"
    )


# ----------------------------------------------------------------------------- exports


def test_full_disk_during_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old model")

    def fsync(fd):  # the bytes went to the temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("keras_deeplab.export.report.os.fsync", fsync)
    with pytest.raises(DiskFullError) as info:
        atomic_write_bytes(target, b"new model" * 1000)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"{target}: no space left on device")
    assert "the existing model.tflite is unchanged" in str(info.value)
    assert target.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]  # no temporary left


def test_full_disk_during_saved_model_export(tmp_path, monkeypatch):
    import keras_deeplab
    from keras_deeplab.export import saved_model

    export_dir = tmp_path / "exported"
    export_dir.mkdir()
    (export_dir / "saved_model.pb").write_bytes(b"previous export")

    class FullDiskArchive:  # the archive's files start, then the disk is full
        def write_out(self, filepath, **kwargs):
            Path(filepath, "saved_model.pb").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saved_model, "_archive", lambda *args: FullDiskArchive())
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    with pytest.raises(DiskFullError) as info:
        saved_model.to_saved_model(model, str(export_dir), overwrite=True)
    message = str(info.value)
    assert message.startswith(f"{export_dir}: no space left on device")
    assert "the existing export is unchanged" in message
    assert (export_dir / "saved_model.pb").read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # partial dir removed


def test_sigkill_during_tflite_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "m.tflite"
    assert _kill_inside("tflite", target, "write", tmp_path) == -signal.SIGKILL
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.tflite.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # hidden, never the target
    atomic_write_bytes(target, b"next export")  # the next write clears the dead temporary
    assert target.read_bytes() == b"next export"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tflite.")]


def test_sigkill_during_saved_model_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "sm"
    assert _kill_inside("saved_model", target, "write", tmp_path) == -signal.SIGKILL
    assert not target.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".sm.partial-")]
    assert len(partial) == 1 and (partial[0] / "saved_model.pb").exists()  # hidden sibling
