"""Verification reports shared by the SavedModel and TFLite exporters.

Every export is checked against the Keras model it came from; the result is a plain,
JSON-serialisable dict. A failed check raises `VerificationError`, which carries that dict
(`error.report`) so callers (e.g. the CLI) can still write it and exit non-zero.
"""

import errno
import json
import os
import time
from pathlib import Path

import numpy as np

from keras_deeplab._json import jsonable


class VerificationError(RuntimeError):
    """An exported artefact does not reproduce its Keras model.

    Args:
        message: what differs, naming the worst output (and layer when found).
        report: the verification report dict, available as `error.report` (None when the
            failure happened before a report existed).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class DiskFullError(OSError):
    """A write failed because the disk is full (`errno.ENOSPC`); nothing older was lost.

    The message names the target, what was kept and the fix. It is an `OSError` with
    `errno == ENOSPC`, so generic handlers (e.g. the CLI's) still catch it.
    """

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self):
        return self.message


def is_disk_full(error):
    """Whether `error` (an `OSError` or a TensorFlow error) means "no space left on device"."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(getattr(error, "message", "") or error)
    return "No space left on device" in text or "ENOSPC" in text or "Disk quota exceeded" in text


def disk_full_message(target, kept):
    """One clear message: what could not be written, what is intact, how to fix it."""
    return (
        f"{target}: no space left on device; the write was abandoned and {kept}. "
        "Fix: free disk space (or write to another disk) and run again."
    )


def pid_alive(pid):
    """Whether process `pid` exists (another user's live process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's live process
        return True
    return True


def _remove_stale_temporaries(path):
    """Deletes `.<name>.<pid>.tmp` files left by killed writers (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` through a temporary file and a rename.

    An interrupted write leaves at most a hidden `.<name>.<pid>.tmp` file, never a truncated
    `path` (the next write to `path` deletes such leftovers of killed processes); an
    existing `path` is replaced only once the new content is complete on disk. A full disk
    raises `DiskFullError` and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if is_disk_full(error):
            kept = f"the existing {path.name} is unchanged" if path.exists() else "nothing was left"
            raise DiskFullError(disk_full_message(path, kept)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_report(path, report):
    """Writes `report` (a dict) as indented JSON, atomically; returns the path."""
    text = json.dumps(jsonable(report), indent=2, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def time_calls(fn, runs=10, warmup=2):
    """`{"median_ms", "min_ms", "runs"}`: wall time of `fn()` over `runs` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs}
