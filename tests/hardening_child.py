"""Child process of tests/test_hardening_faults.py: starts a write and is SIGKILLed inside it.

`python -m tests.hardening_child MODE TARGET POINT MARKER`: a TensorFlow/keras_deeplab
function is wrapped so that, at the chosen point of the write, it creates `MARKER` and
sleeps; the parent waits for `MARKER` and kills this process with SIGKILL there.

Modes:
    checkpoint: saves step 1 (weights = 1), then starts saving step 2 (weights = 2) in
        directory TARGET. POINT: `shards` (shards written to `ckpt-2_temp/`, before the
        merge into `ckpt-2.index/.data`), `pointer` (checkpoint files complete, before the
        `checkpoint` pointer file is updated).
    tflite: `to_tflite` of a tiny DeepLab model to file TARGET; POINT `write` (inside the
        atomic write: data written to the temporary file, before fsync + rename).
    saved_model: `to_saved_model` to directory TARGET; POINT `write` (inside the SavedModel
        write, after the first files of the export are written).
"""

import os
import sys
import time
from pathlib import Path


def _stop_here(marker):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(120)  # the parent kills us here
    raise SystemExit("not killed")


def tiny_training_state(value):
    """A small model + built optimizer whose weights all equal `value`."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    for variable in model.weights:
        variable.assign(np.full(variable.shape, value, "float32"))
    return model, optimizer


def checkpoint(target, point, marker):
    from tensorflow.python.checkpoint import checkpoint_management
    from tensorflow.python.ops import gen_io_ops

    from keras_deeplab.training.checkpoint import TrainingCheckpoint

    model, optimizer = tiny_training_state(1.0)
    ckpt = TrainingCheckpoint(target, model, optimizer)
    ckpt.save(step=1, epoch=0, seed=0, steps_per_epoch=10)
    for variable in model.weights:
        variable.assign(variable * 2.0)
    if point == "shards":
        gen_io_ops.merge_v2_checkpoints = lambda *a, **k: _stop_here(marker)
    elif point == "pointer":
        checkpoint_management.update_checkpoint_state_internal = lambda *a, **k: _stop_here(marker)
    else:
        raise SystemExit(f"unknown point {point}")
    ckpt.save(step=2, epoch=0, seed=0, steps_per_epoch=10)


def tflite(target, point, marker):
    import keras_deeplab
    from keras_deeplab.export import report, to_tflite

    def fsync(fd):
        _stop_here(marker)

    report.os.fsync = fsync
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    to_tflite(model, target, input_size=33)


def saved_model(target, point, marker):
    import keras_deeplab
    from keras_deeplab.export import saved_model

    real_archive = saved_model._archive

    def archive(*args):
        result = real_archive(*args)
        real_write = result.write_out

        def write_out(filepath, **kwargs):
            Path(filepath, "variables").mkdir(parents=True, exist_ok=True)
            Path(filepath, "saved_model.pb").write_bytes(b"\x08\x01partial")
            _stop_here(marker)
            return real_write(filepath, **kwargs)

        result.write_out = write_out
        return result

    saved_model._archive = archive
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    saved_model.to_saved_model(model, target, overwrite=True)


if __name__ == "__main__":
    mode, target, point, marker = sys.argv[1:5]
    {"checkpoint": checkpoint, "tflite": tflite, "saved_model": saved_model}[mode](
        target, point, marker
    )
