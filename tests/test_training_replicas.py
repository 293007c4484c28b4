"""Training on several replicas (issue 18) and the training precision switch (issue 17).

The 2-replica checks run in one subprocess with two logical CPU devices
(`tests/training_worker.py replicas`): a float16 step whose gradients overflow on replica 1
only is skipped on both replicas and halves the loss scale; a batch that leaves a replica
empty is refused; dropout draws per-replica masks; `train.deterministic` enables op
determinism. The rest runs in this process: precision resolution and recording, the
deprecated `mixed_precision` alias, the evaluation batch rule, the collective choice, and a
bfloat16-trained run that loads back (and so exports) in float32.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab.precision
from keras_deeplab.training import Trainer, load_config, train_from_config
from keras_deeplab.training.distribute import communication_options
from keras_deeplab.training.run import eval_batch_size
from keras_deeplab.training.run_dir import load_run
from tests.training_helpers import (
    config,
    micro_model,
    plain_micro_model,
    random_batches,
    run_python,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replicas_report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("replicas")
    out = workdir / "report.json"
    run_python([ROOT / "tests" / "training_worker.py", "replicas", out, workdir], timeout=400)
    return json.loads(out.read_text())


def test_float16_overflow_on_one_replica_skips_the_step_everywhere(replicas_report):
    report = replicas_report
    assert report["fp16_initial_scale"] == 32768.0
    # Per-replica batches [finite, overflowing]: before the fix the weights became -inf.
    assert report["fp16_loss_finite"] and report["fp16_weights_finite"]
    assert report["fp16_change_after_overflow"] == 0.0  # skipped on both replicas
    assert report["fp16_scale_after_overflow"] == 16384.0
    assert report["fp16_iterations_after_overflow"] == 0
    # The next, finite step is applied, identically on both replicas.
    assert report["fp16_iterations_after_finite"] == 1
    assert report["fp16_change_after_finite"] > 1e-4
    assert report["fp16_replica_spread"] == 0.0


def test_a_batch_that_leaves_a_replica_empty_is_refused(replicas_report):
    report = replicas_report
    assert report["batch_1"].startswith("error: train.batch_size=1 is smaller than the 2")
    assert "Set train.batch_size to at least 2" in report["batch_1"]
    assert report["batch_3"] == "ok" and "does not divide over 2" in report["batch_3_warnings"][0]
    assert report["data_batch_1"].startswith("error: the training batch size=1 is smaller")


def test_dropout_masks_differ_per_replica(replicas_report):
    (state,) = replicas_report["seed_states"]  # the micro model's one dropout layer
    (initial,) = replicas_report["seed_initial"]
    assert state[0][0] == initial[0]  # replica 0 keeps the one-device seed stream
    assert state[1][0] == initial[0] + 1_000_003
    assert state[0][1] == state[1][1] > initial[1]  # one draw per step on each replica


def test_deterministic_enables_op_determinism(replicas_report, monkeypatch, tmp_path):
    assert replicas_report["deterministic_loss_finite"]  # 2 replicas, determinism on: runs
    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(1))
    Trainer(micro_model, config(tmp_path, train={"deterministic": False}))
    assert calls == []
    Trainer(micro_model, config(tmp_path, train={"deterministic": True}))
    assert calls == [1]


def _hardware(monkeypatch, flags=(), gpus=()):
    monkeypatch.setattr(keras_deeplab.precision, "_hardware", lambda: (frozenset(flags), gpus))


def test_float16_without_a_gpu_is_one_clear_error(monkeypatch, tmp_path):
    _hardware(monkeypatch, flags=("amx_bf16",))
    with pytest.raises(ValueError, match="float16' for training needs a GPU.*bfloat16"):
        Trainer(micro_model, config(tmp_path, train={"precision": "float16"}))


def test_auto_on_an_amx_cpu_trains_in_bfloat16_and_records_it(monkeypatch, tmp_path):
    _hardware(monkeypatch, flags=("amx_bf16",))
    # A model without depthwise convolutions (those train in float32 under auto on AMX CPUs).
    trainer = Trainer(plain_micro_model, config(tmp_path, train={"steps": 1, "precision": "auto"}))
    assert trainer.precision == "bfloat16"
    assert trainer.model.get_layer("conv1").compute_dtype == "bfloat16"
    result = trainer.fit(lambda seed: random_batches(seed, num_batches=1))
    # float32 master weights (and optimizer state), a float32 loss
    assert {v.dtype for v in trainer.model.weights} == {"float32"}
    assert {v.dtype for v in trainer.optimizer.variables if v.dtype != "int64"} == {"float32"}
    assert (
        trainer._train_step(next(iter(random_batches(1, 1))), tf.constant(1, tf.int64))[0].dtype
        == tf.float32
    )
    assert result.precision == "bfloat16" and np.isfinite(result.loss)
    choice = "precision auto -> bfloat16 (CPU has amx_bf16)"
    assert result.precision_choice == choice and choice in result.summary()
    recorded = (tmp_path / "config.yaml").read_text()
    assert recorded.startswith(f"# {choice}\n") and "  precision: bfloat16\n" in recorded


def test_auto_without_a_native_unit_is_float32(monkeypatch, tmp_path):
    _hardware(monkeypatch, flags=("avx512f",))
    trainer = Trainer(micro_model, config(tmp_path, train={"precision": "auto"}))
    assert trainer.precision == "float32" and trainer.model.dtype_policy.name == "float32"
    assert trainer.loss_scale is None


def test_float16_on_a_gpu_machine_uses_loss_scaling(monkeypatch, tmp_path):
    _hardware(monkeypatch, gpus=(("test GPU", (7, 0)),))
    trainer = Trainer(micro_model, config(tmp_path, train={"precision": "float16"}))
    assert trainer.model.get_layer("conv1").compute_dtype == "float16"
    assert trainer.loss_scale == 32768.0


def test_mixed_precision_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match="use train.precision=float32"):
        cfg = load_config(None, ["train.mixed_precision=none"])
    assert cfg.train.precision == "float32" and cfg.train.mixed_precision is None
    with pytest.warns(FutureWarning, match="use train.precision=bfloat16"):
        assert load_config(None, ["train.mixed_precision=bfloat16"]).train.precision == "bfloat16"
    with pytest.raises(ValueError, match="disagrees with train.precision='float32'"):
        load_config(None, ["train.mixed_precision=bfloat16", "train.precision=float32"])
    with pytest.raises(ValueError, match="train.precision: expected one of 'auto', 'float32'"):
        load_config(None, ["train.precision=half"])


def test_evaluation_batches_hold_one_image_per_replica():
    assert eval_batch_size(None, 1) == 1 and eval_batch_size(None, 4) == 4
    assert eval_batch_size(8, 4) == 8
    with pytest.warns(UserWarning, match="eval_batch_size=1 leaves replicas idle"):
        assert eval_batch_size(1, 4) == 4
    for recipe in ("voc_deeplabv3plus_xception65", "cityscapes_deeplabv3plus_xception65"):
        path = ROOT / "keras_deeplab" / "configs" / f"{recipe}.yaml"
        assert load_config(path).data.eval_batch_size is None


def test_collectives_ring_on_cpus_nccl_only_with_gpus():
    ring = tf.distribute.experimental.CommunicationImplementation.RING
    if not tf.config.list_physical_devices("GPU"):
        assert communication_options("auto").implementation == ring
        with pytest.raises(ValueError, match="nccl needs GPUs.*ring"):
            communication_options("nccl")
    assert communication_options("ring").implementation == ring
    with pytest.raises(ValueError, match="Unknown communication 'mpi'; use one of auto, ring"):
        communication_options("mpi")
    with pytest.raises(ValueError, match="train.communication: expected one of"):
        load_config(None, ["train.communication=mpi"])


def test_a_bfloat16_run_loads_and_exports_in_float32(monkeypatch, tmp_path):
    _hardware(monkeypatch, flags=("amx_bf16",))
    overrides = [
        "model.name=deeplabv3_mobilenetv2_dm05",
        "data.options={num_examples: 4, image_size: 40}",
        "data.crop_size=33",
        "data.eval_split=null",
        "train.batch_size=2",
        "train.steps=1",
        "train.verbose=0",
        "train.precision=bfloat16",
        f"checkpoint.dir={tmp_path}",
        "checkpoint.tensorboard=false",
    ]
    result = train_from_config(None, overrides)
    assert result.model.dtype_policy.name == "mixed_bfloat16"
    loaded = load_run(tmp_path).model  # what keras-deeplab eval/predict/export rebuild
    assert loaded.dtype_policy.name == "float32"
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    for a, b in zip(loaded.get_weights(), result.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
