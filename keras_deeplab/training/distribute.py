"""Distribution strategies for the trainer (one code path for all of them).

`make_strategy("auto")` picks `MultiWorkerMirroredStrategy` when `TF_CONFIG`
describes more than one task, `MirroredStrategy` when several GPUs are visible,
and the default (one-device) strategy otherwise. Create the strategy before any
other TensorFlow work: the multi-worker strategy configures the runtime's
collectives at start-up.

Multi-worker collectives (`communication`, `train.communication`): `"auto"` is NCCL when
this worker sees a GPU and RING on CPUs (TensorFlow's own AUTO would pick RING for GPUs
too); `"ring"` or `"nccl"` force one. `MirroredStrategy` (one machine) keeps TensorFlow's
default cross-device reduction (NCCL all-reduce on GPUs).

CPU replicas (`cpu_replicas`, `train.cpu_replicas`): on a machine without GPUs, `n > 1` splits
the CPU into `n` logical devices, each running its ops on `cores // n` threads, and mirrors
the model over them. A small model's kernels are too short to share two cores well: the
demo's epochs ran 1.05-1.5x faster as two single-threaded replicas on 2 cores than as one
replica on both (docs/training.md). The split must come before TensorFlow's runtime starts
(a fresh process, as in the CLI); later, one warning and one device.

Example:
    ```python
    strategy = make_strategy("auto")  # TF_CONFIG with 2 workers -> MultiWorkerMirroredStrategy
    ```
"""

import json
import os
import warnings

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
COMMUNICATIONS = ("auto", "ring", "nccl")


def _tf_config():
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None


def _num_tasks(config):
    return sum(len(tasks) for tasks in config.get("cluster", {}).values())


def communication_options(communication="auto"):
    """`tf.distribute.experimental.CommunicationOptions` for `"auto"`, `"ring"` or `"nccl"`.

    Example:
        `communication_options("auto").implementation`  # RING on a CPU-only worker
    """
    if communication not in COMMUNICATIONS:
        raise ValueError(
            f"Unknown communication {communication!r}; use one of {', '.join(COMMUNICATIONS)} "
            "(train.communication: auto picks NCCL on GPUs, RING on CPUs)."
        )
    gpus = bool(tf.config.list_physical_devices("GPU"))
    if communication == "nccl" and not gpus:
        raise ValueError(
            "train.communication=nccl needs GPUs and this worker has none; use "
            "train.communication=ring (or auto) on CPU workers."
        )
    implementation = tf.distribute.experimental.CommunicationImplementation
    if communication == "auto":
        communication = "nccl" if gpus else "ring"
    chosen = implementation.NCCL if communication == "nccl" else implementation.RING
    return tf.distribute.experimental.CommunicationOptions(implementation=chosen)


def usable_cores():
    """The CPU cores this process may run on (its affinity mask; the CPU count elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_cpu(replicas):
    """Names of `replicas` logical CPU devices with `cores // replicas` threads each.

    Returns None, with one warning, when TensorFlow's runtime has started with another
    layout (the split cannot change then).

    Example:
        `split_cpu(2)`  # ["/device:CPU:0", "/device:CPU:1"] in a fresh process
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or [None]
    if len(current) != replicas:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
            )
            tf.config.threading.set_intra_op_parallelism_threads(max(1, usable_cores() // replicas))
            tf.config.threading.set_inter_op_parallelism_threads(replicas)
        except RuntimeError:
            warnings.warn(
                f"train.cpu_replicas={replicas}: TensorFlow's runtime has already started, so "
                "the CPU cannot be split any more; training on one device. Start a fresh "
                "process (e.g. the keras-deeplab CLI) to use CPU replicas.",
                stacklevel=3,
            )
            return None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def cpu_split(strategy):
    """Whether `strategy` mirrors over several logical CPU devices of this machine."""
    if strategy.num_replicas_in_sync < 2 or isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ):
        return False
    return all("CPU" in device.upper() for device in strategy.extended.worker_devices)


def make_strategy(kind="auto", devices=None, communication="auto", cpu_replicas=1):
    """A `tf.distribute.Strategy` of `kind` (see module docstring).

    Args:
        kind: `"auto"`, `"default"`, `"mirrored"` or `"multi_worker"`.
        devices: device list for `"mirrored"` (default: all GPUs, else the CPU).
        communication: multi-worker collectives, `"auto"` (NCCL on GPUs, RING on CPUs),
            `"ring"` or `"nccl"`.
        cpu_replicas: on a machine without GPUs and with `kind` `"auto"` or `"mirrored"`,
            mirror over this many logical CPU devices (`split_cpu`); 1 keeps one device.

    Example:
        `make_strategy("multi_worker", communication="auto")`  # needs TF_CONFIG
    """
    if kind not in STRATEGIES:
        raise ValueError(f"Unknown strategy {kind!r}; use one of {STRATEGIES}.")
    options = communication_options(communication)  # bad values fail for every kind
    if int(cpu_replicas) != cpu_replicas or cpu_replicas < 1:
        raise ValueError(f"cpu_replicas must be a positive integer; got {cpu_replicas!r}.")
    split = (
        cpu_replicas > 1
        and kind in ("auto", "mirrored")
        and devices is None
        and not _num_tasks(_tf_config())
        and not tf.config.list_physical_devices("GPU")
    )
    if split:
        devices = split_cpu(int(cpu_replicas))
        kind = "mirrored" if devices else "default"
    if kind == "auto":
        if _num_tasks(_tf_config()) > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi_worker":
        if not _num_tasks(_tf_config()):
            raise ValueError(
                "strategy 'multi_worker' needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def task_info(strategy):
    """`(task_type, task_id, is_chief)`; single-process strategies are their own chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0, True
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return task_type, task_id, is_chief
