"""`train.cpu_replicas`: replicas on logical CPU devices (`training.distribute.split_cpu`)."""

import json
import textwrap
import warnings

import pytest
import tensorflow as tf

from keras_deeplab.configs import recipe_path
from keras_deeplab.training import ConfigError, load_config
from keras_deeplab.training.distribute import make_strategy
from tests.training_helpers import run_python

FRESH_PROCESS = textwrap.dedent(
    """
    import json, os, warnings
    import tensorflow as tf
    from keras_deeplab.training.distribute import cpu_split, make_strategy, usable_cores
    strategy = make_strategy("auto", cpu_replicas=2)
    again = make_strategy("auto", cpu_replicas=2)  # the same split: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = make_strategy("auto", cpu_replicas=3)  # the runtime has started: one device
    values = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group)
    print(json.dumps({
        "kind": type(strategy).__name__,
        "split": cpu_split(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "devices": list(strategy.extended.worker_devices),
        "ids": sorted(int(v) for v in strategy.experimental_local_results(values)),
        "again": again.num_replicas_in_sync,
        "other": other.num_replicas_in_sync,
        "warnings": [str(w.message) for w in caught],
        "intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        "cores": usable_cores(),
    }))
    """
)


def test_a_fresh_process_splits_the_cpu_into_replicas():
    done = run_python(["-c", FRESH_PROCESS], timeout=120, CUDA_VISIBLE_DEVICES="")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kind"] == "MirroredStrategy" and report["replicas"] == 2 and report["split"]
    assert [d.rsplit(":", 1)[-1] for d in report["devices"]] == ["0", "1"]
    assert report["ids"] == [0, 1] and report["again"] == 2
    assert report["other"] == 1 and len(report["warnings"]) == 1
    assert "cpu_replicas=3" in report["warnings"][0] and "fresh process" in report["warnings"][0]
    assert report["intra"] == max(1, report["cores"] // 2) and report["inter"] == 2


def test_a_started_runtime_warns_and_keeps_one_device():
    tf.constant(0.0)  # the runtime of this test process has started
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = make_strategy("auto", cpu_replicas=5)
    assert strategy.num_replicas_in_sync == 1
    assert [str(w.message) for w in caught if "cpu_replicas=5" in str(w.message)]
    assert make_strategy("default", cpu_replicas=5).num_replicas_in_sync == 1  # not split
    with pytest.raises(ValueError, match="positive integer"):
        make_strategy("auto", cpu_replicas=0)


def test_config_errors_name_the_conflict():
    with pytest.raises(ConfigError) as info:
        load_config(
            recipe_path("shapes_demo"),
            ["train.cpu_replicas=3", "train.strategy=mirrored", "train.batch_size=32"],
        )
    assert "train.batch_size (32) must be a multiple of train.cpu_replicas (3)" in str(info.value)
    # strategies that do not split the CPU do not use it: no error
    for strategy in ("default", "multi_worker"):
        overrides = ["train.cpu_replicas=3", f"train.strategy={strategy}", "train.batch_size=32"]
        assert load_config(recipe_path("shapes_demo"), overrides).train.cpu_replicas == 3
    with pytest.raises(ConfigError, match=r"train.cpu_replicas: must be >= 1"):
        load_config(recipe_path("shapes_demo"), ["train.cpu_replicas=0"])
