"""Crash-safe training checkpoints (`tf.train.Checkpoint` + `CheckpointManager`).

What is saved: the model's weights, the optimizer (slots, iteration counter, hence
the learning-rate position), the RNG states of the model's seed generators
(dropout), and the counters `step`, `epoch`, `seed` and `steps_per_epoch`, from
which the trainer restores the data order.

Atomicity (verified in TF 2.21's `checkpoint_management.py` and
`functional_saver.py`): shards are written to `<prefix>_temp/` and merged into
`<prefix>.index/.data-*`; only after that does the manager rewrite the `checkpoint`
pointer file, through `file_io.atomic_write_string_to_file` (temp file + rename),
*before* it deletes older checkpoints. A crash at any point therefore leaves the
pointer naming a complete checkpoint; a half-written newer prefix is ignored
(and overwritten when that step is saved again).

Faults: a SIGKILL at any point of a save leaves the previous checkpoint loadable (see
tests/test_hardening_faults.py, which kills a writer inside the shard write and before the
pointer update). A failed save (a full disk: `DiskFullError`, an `OSError` with
`errno.ENOSPC`) removes the partial files of the new step, keeps every earlier checkpoint
and says so in its message; training stops there and resumes from the last complete one.

Multi-worker: every worker must take part in a save, but only the chief writes
into the run directory; the others write to a private temporary directory that is
deleted right after (the TF multi-worker recipe). All workers restore from the
chief's directory, so the run directory must be shared by every worker (a network
filesystem or a `gs://` bucket); the trainer checks at start that every worker restored
the same step and stops every worker with one error otherwise
(`Trainer._check_restored`).
"""

import glob
import os
import shutil

import tensorflow as tf


class TrainingCheckpoint:
    """Checkpoint of one training run in `directory`.

    Args:
        directory: run directory (one directory shared by all workers: the chief writes
            it, every worker restores from it).
        model: the Keras model.
        optimizer: the Keras optimizer, already built.
        max_to_keep: checkpoints kept by the manager.
        is_chief: whether this process writes the real checkpoints.
        task_id: worker index (names the temporary directory of non-chief workers).

    Example:
        ```python
        ckpt = TrainingCheckpoint("runs/voc", model, optimizer)
        ckpt.restore()            # None on a fresh run
        ckpt.save(step=1000)
        ```
    """

    def __init__(self, directory, model, optimizer, max_to_keep=3, is_chief=True, task_id=0):
        self.directory = str(directory)
        self.is_chief = is_chief
        self.max_to_keep = max_to_keep
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.seed = tf.Variable(0, dtype=tf.int64, trainable=False, name="seed")
        self.steps_per_epoch = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="steps_per_epoch"
        )
        weights = {id(v) for v in model.weights}
        rng = [v for v in model.variables if id(v) not in weights]
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            rng=rng,
            step=self.step,
            epoch=self.epoch,
            seed=self.seed,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.write_dir = (
            self.directory if is_chief else os.path.join(self.directory, f".worker{task_id}_tmp")
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_dir, max_to_keep=max_to_keep, checkpoint_name="ckpt"
        )
        self.last_saved_step = None

    @property
    def latest(self):
        """Path prefix of the newest complete checkpoint in the run directory, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self, path=None):
        """Restores `path` (default: the latest); returns the path or None if there is none."""
        path = path or self.latest
        if path is None:
            return None
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ValueError(
                f"Checkpoint {path} does not match this model/optimizer ({error}). It belongs to a "
                "different configuration: use a new checkpoint.dir or delete the old run."
            ) from None
        self.last_saved_step = int(self.step.numpy())
        return path

    def save(self, step, epoch, seed, steps_per_epoch):
        """Writes a checkpoint numbered `step` (once per step); returns its path."""
        if self.last_saved_step == step:
            return self.latest
        self.step.assign(step)
        self.epoch.assign(epoch)
        self.seed.assign(seed)
        self.steps_per_epoch.assign(steps_per_epoch)
        previous = self.latest
        try:
            path = self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            self._abandon(step)
            raise self._save_error(error, step, previous) from None
        self.last_saved_step = step
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        return path if self.is_chief else self.latest

    def _abandon(self, step):
        """Removes the partial files of a failed save of `step` and re-reads the manager state."""
        prefix = os.path.join(self.write_dir, f"ckpt-{step}")
        state = tf.train.get_checkpoint_state(self.write_dir)
        recorded = set(state.all_model_checkpoint_paths) if state else set()
        if not any(os.path.basename(p) == f"ckpt-{step}" for p in recorded):
            for leftover in glob.glob(glob.escape(prefix) + ".*"):
                if os.path.isfile(leftover):
                    os.remove(leftover)
            shutil.rmtree(prefix + "_temp", ignore_errors=True)
        # the manager may have recorded the failed step in memory; start again from disk
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            self.write_dir,
            max_to_keep=self.max_to_keep,
            checkpoint_name="ckpt",
        )

    def _save_error(self, error, step, previous):
        from keras_deeplab.export.report import DiskFullError, disk_full_message, is_disk_full

        kept = (
            f"the previous checkpoint {previous} is intact (resuming starts from it)"
            if previous
            else "no earlier checkpoint existed"
        )
        target = f"checkpoint step {step} in {self.write_dir}"
        if is_disk_full(error):
            return DiskFullError(disk_full_message(target, kept))
        message = getattr(error, "message", None) or str(error)
        return OSError(f"{target}: the save failed ({message.strip()}); {kept}.")
