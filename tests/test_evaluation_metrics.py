"""Confusion-matrix metrics: NumPy streaming, TF per batch, Keras metric under strategies."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deeplab.evaluation import (
    ConfusionMatrix,
    StreamingMeanIoU,
    batch_confusion_matrix,
    scores_from_confusion,
)

REPO = Path(__file__).parents[1]


def random_batch(seed, shape=(2, 9, 11), num_classes=5, ignore_fraction=0.2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) < ignore_fraction] = 255
    logits = rng.normal(size=(*shape, num_classes)).astype(np.float32)
    return labels, logits


def test_hand_computed_scores():
    # 3 classes; class 2 appears in neither GT nor predictions; 255 ignored.
    labels = np.array([[0, 0, 0, 1], [1, 1, 255, 255]])
    preds = np.array([[0, 0, 1, 1], [1, 0, 2, 0]])
    cm = ConfusionMatrix(4).update(labels, preds)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 0] = 2, 1, 2, 1
    np.testing.assert_array_equal(cm.confusion, expected)
    r = cm.result()
    # IoU0 = 2 / (3 + 3 - 2) = 0.5, IoU1 = 2 / (3 + 3 - 2) = 0.5; classes 2, 3 absent -> NaN.
    np.testing.assert_allclose(r["per_class_iou"][:2], [0.5, 0.5])
    assert np.isnan(r["per_class_iou"][2:]).all()
    assert r["miou"] == pytest.approx(0.5)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert r["fw_iou"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert r["num_pixels"] == 6


def test_class_only_predicted_counts_as_zero_iou():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 1])
    r = ConfusionMatrix(3, ignore_label=None).update(labels, preds).result()
    np.testing.assert_allclose(r["per_class_iou"], [0.5, 1.0, 0.0])
    assert r["miou"] == pytest.approx(0.5)
    # frequency weights come from the ground truth only
    assert r["fw_iou"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_streaming_equals_one_shot_and_merge():
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    all_labels, all_preds = [], []
    for seed in range(4):
        labels, logits = random_batch(seed)
        preds = logits.argmax(-1)
        a.update(labels, preds)
        all_labels.append(labels.ravel())
        all_preds.append(preds.ravel())
    b.update(np.concatenate(all_labels), np.concatenate(all_preds))
    np.testing.assert_array_equal(a.confusion, b.confusion)
    merged = ConfusionMatrix(5).merge(a).merge(b)
    np.testing.assert_array_equal(merged.confusion, 2 * a.confusion)
    assert a.result()["miou"] == b.result()["miou"]
    a.reset()
    assert a.confusion.sum() == 0 and np.isnan(a.result()["miou"])


def test_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 7]), np.array([0, 1]))
    with pytest.raises(ValueError, match="more classes"):
        cm.update(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_batch_confusion_matrix_matches_numpy():
    labels, logits = random_batch(7)
    expected = ConfusionMatrix(5).update(labels, logits.argmax(-1)).confusion
    from_logits = batch_confusion_matrix(labels, logits, 5)
    from_ids = tf.function(batch_confusion_matrix, reduce_retracing=True)(
        tf.constant(labels), tf.argmax(logits, -1), 5
    )
    assert from_logits.dtype == tf.int64
    np.testing.assert_array_equal(from_logits.numpy(), expected)
    np.testing.assert_array_equal(from_ids.numpy(), expected)


def test_keras_metric_default_strategy_run():
    strategy = tf.distribute.get_strategy()
    metric = StreamingMeanIoU(5)
    reference = ConfusionMatrix(5)
    for seed in range(3):
        labels, logits = random_batch(seed)
        reference.update(labels, logits.argmax(-1))
        strategy.run(metric.update_state, args=(labels[..., None], logits))
    np.testing.assert_array_equal(metric.scores()["confusion"], reference.confusion)
    assert float(metric.result()) == pytest.approx(reference.result()["miou"], abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_keras_metric_in_evaluate():
    inputs = keras.Input((6, 7, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        metrics=[StreamingMeanIoU(4, name="miou")],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)
    y = rng.integers(0, 4, (5, 6, 7))
    y[:, 0] = 255
    result = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    preds = model.predict(x, verbose=0).argmax(-1)
    expected = ConfusionMatrix(4).update(y, preds).result()["miou"]
    assert result["miou"] == pytest.approx(expected, abs=1e-6)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_deeplab.evaluation import ConfusionMatrix, StreamingMeanIoU, batch_confusion_matrix

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (4, 9, 11))
    labels[rng.random(labels.shape) < 0.2] = 255
    logits = rng.normal(size=(4, 9, 11, 5)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((labels, logits)).batch(4)
    dist = strategy.experimental_distribute_dataset(dataset)
    with strategy.scope():
        metric = StreamingMeanIoU(5)

    @tf.function
    def step(batch):
        def replica_fn(y, p):
            metric.update_state(y, p)
            return batch_confusion_matrix(y, p, 5), tf.shape(y)[0]
        cm, n = strategy.run(replica_fn, args=batch)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, cm, axis=None),
                strategy.experimental_local_results(n))

    total = np.zeros((5, 5), np.int64)
    for batch in dist:
        cm, per_replica = step(batch)
        total += cm.numpy()
    reference = ConfusionMatrix(5).update(labels, logits.argmax(-1))
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "per_replica_batch": [int(n) for n in per_replica],
        "reduced_equal": bool((total == reference.confusion).all()),
        "metric_equal": bool((metric.scores()["confusion"] == reference.confusion).all()),
        "metric_miou": float(metric.result()),
        "reference_miou": reference.result()["miou"],
    }))
    """
)


def test_mirrored_strategy_two_cpus():
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["per_replica_batch"] == [2, 2]
    assert out["reduced_equal"] and out["metric_equal"]
    assert out["metric_miou"] == pytest.approx(out["reference_miou"], abs=1e-6)


def test_scores_from_confusion_validation():
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(np.zeros((2, 3)))
