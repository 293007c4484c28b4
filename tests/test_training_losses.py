"""Losses: ignore label, class weights, top-k hard pixels, MSC terms, weight decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images

import keras_deeplab
from keras_deeplab.training import (
    cross_entropy_terms,
    default_weight_decay,
    regularized_weights,
    segmentation_loss,
    weight_decay_loss,
)
from keras_deeplab.training.losses import (
    downsample_labels,
    kth_largest,
    loss_terms,
    softmax_cross_entropy,
    top_k_terms,
)

NUM_CLASSES = 4


def _example(seed=0, ignore_fraction=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 5, 6, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 5, 6)).astype("int32")
    labels[rng.random(labels.shape) < ignore_fraction] = 255
    return logits, labels


def _numpy_ce(logits, labels):
    """Per-pixel softmax cross-entropy (flat), 0 where the label is 255."""
    logits = logits.reshape(-1, NUM_CLASSES).astype(np.float64)
    labels = labels.reshape(-1)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    ce = np.zeros(len(labels))
    ce[valid] = -log_probs[valid, labels[valid]]
    return ce, valid


def _loss_and_grad(logits, labels, **kwargs):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = segmentation_loss(labels, logits, **kwargs)
    return float(loss), tape.gradient(loss, logits).numpy()


def test_loss_is_mean_over_valid_pixels():
    logits, labels = _example()
    ce, valid = _numpy_ce(logits, labels)
    loss, _ = _loss_and_grad(logits, labels)
    assert 0 < valid.sum() < valid.size
    np.testing.assert_allclose(loss, ce[valid].mean(), rtol=1e-6)


def test_loss_ignores_255_exactly():
    logits, labels = _example()
    ignored = labels == 255
    loss, grad = _loss_and_grad(logits, labels)
    # Arbitrary, huge and non-finite logits at ignored pixels change nothing.
    for value in (1e30, -1e30, np.inf, np.nan):
        changed = logits.copy()
        changed[ignored] = value
        changed[ignored, 0] = 7.0
        loss2, grad2 = _loss_and_grad(changed, labels)
        assert loss2 == loss
        np.testing.assert_array_equal(grad2, grad)
    assert np.all(grad[ignored] == 0.0)
    assert np.abs(grad[~ignored]).min() > 0


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_cross_entropy_equals_tf_in_value_and_gradient(scale):
    rng = np.random.default_rng(1)
    for classes in (2, 5, 21):
        logits = tf.constant((rng.normal(size=(300, classes)) * scale).astype("float32"))
        labels = tf.constant(rng.integers(0, classes, 300).astype("int32"))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            ours = softmax_cross_entropy(logits, labels)
            theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            upstream = tf.range(300, dtype=tf.float32) / 300.0  # a non-uniform upstream gradient
            ours_sum, theirs_sum = tf.reduce_sum(ours * upstream), tf.reduce_sum(theirs * upstream)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            tape.gradient(ours_sum, logits), tape.gradient(theirs_sum, logits), atol=1e-6
        )


def test_loss_without_ignored_pixels_equals_the_reference():
    logits, labels = _example(ignore_fraction=0.0)
    loss, grad = _loss_and_grad(logits, labels)
    ce, _ = _numpy_ce(logits, labels)
    assert loss == pytest.approx(ce.mean(), rel=1e-6)
    assert np.isfinite(grad).all() and np.abs(grad).min() > 0


def test_downsample_labels_takes_every_stride_th_label_on_the_align_corners_grid():
    labels = np.random.default_rng(2).integers(0, 5, (2, 97, 65)).astype("int32")
    for stride in (1, 4, 8, 16):
        logits = tf.zeros((2, 96 // stride + 1, 64 // stride + 1, 5))
        np.testing.assert_array_equal(
            downsample_labels(tf.constant(labels), logits), labels[:, ::stride, ::stride]
        )


def test_an_output_smaller_than_the_logits_is_compared_with_downsampled_labels():
    """Deep supervision at a tap's stride: the auxiliary term is the cross-entropy against
    the labels of the pixels its grid sits on, each term normalised by its own count."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, NUM_CLASSES, (2, 9, 9)).astype("int32")
    labels[0, 0, 0] = 255
    logits = rng.normal(size=(2, 9, 9, NUM_CLASSES)).astype("float32")
    aux = rng.normal(size=(2, 3, 3, NUM_CLASSES)).astype("float32")  # stride 4
    terms = loss_terms(labels, {"logits": logits, "aux": aux}, output_weights={"aux": 0.5})
    (aux_total, aux_count), (main_total, main_count) = terms  # sorted keys: aux, logits
    ce, valid = _numpy_ce(aux, labels[:, ::4, ::4])
    assert float(aux_count) == valid.sum() == 17
    assert float(aux_total) == pytest.approx(0.5 * ce.sum(), rel=1e-5)
    ce, valid = _numpy_ce(logits, labels)
    assert float(main_count) == valid.sum() and float(main_total) == pytest.approx(
        ce.sum(), rel=1e-5
    )


def test_all_ignored_gives_zero_loss():
    logits, labels = _example()
    loss, grad = _loss_and_grad(logits, np.full_like(labels, 255))
    assert loss == 0.0 and np.all(grad == 0)


def test_custom_ignore_label():
    logits, labels = _example()
    labels = np.where(labels == 255, 3, labels)  # class id 3 plays the ignore label
    ce, valid = _numpy_ce(logits, np.where(labels == 3, 255, labels))
    loss, grad = _loss_and_grad(logits, labels, ignore_label=3)
    np.testing.assert_allclose(loss, ce[valid].mean(), rtol=1e-6)
    assert np.all(grad[labels == 3] == 0.0)


def test_class_weights_normalised_by_valid_pixels():
    logits, labels = _example()
    weights = np.array([0.5, 2.0, 1.0, 3.0])
    ce, valid = _numpy_ce(logits, labels)
    expected = (ce[valid] * weights[labels.reshape(-1)[valid]]).sum() / valid.sum()
    loss, _ = _loss_and_grad(logits, labels, class_weights=list(weights))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        segmentation_loss(labels, logits, class_weights=[1.0, 2.0])


def test_labels_out_of_range_are_an_error():
    logits, labels = _example()
    labels[0, 0, 0] = NUM_CLASSES
    with pytest.raises(tf.errors.InvalidArgumentError, match="mask values must be in"):
        segmentation_loss(labels, logits)


def _numpy_top_k(logits, labels, fraction):
    ce, _ = _numpy_ce(logits, labels)
    k = int(np.float32(fraction) * np.float32(ce.size))
    top = np.sort(ce)[::-1][:k]
    return top.sum() / np.count_nonzero(top)


def test_top_k_hard_pixel_mining():
    logits, labels = _example()
    total, count = cross_entropy_terms(labels, logits, top_k_percent_pixels=0.25)
    ce, _ = _numpy_ce(logits, labels)
    assert int(count) == int(0.25 * ce.size)  # 15 of 60 pixels, all with a non-zero loss
    np.testing.assert_allclose(float(total / count), _numpy_top_k(logits, labels, 0.25), rtol=1e-6)
    # The hardest pixels have a larger mean loss than all valid pixels.
    assert float(total / count) > float(segmentation_loss(labels, logits))


def _top_k_reference(losses, k):
    top, _ = tf.math.top_k(losses, k=k, sorted=False)  # the official mining
    return tf.reduce_sum(top), tf.reduce_sum(tf.cast(tf.not_equal(top, 0.0), tf.float32))


@pytest.mark.parametrize("k", [1, 7, 1000, 2400, 2999, 3000])
def test_top_k_terms_equal_the_official_top_k_in_value_count_and_gradient(k):
    rng = np.random.default_rng(k)
    losses = rng.exponential(1.0, 3000).astype("float32")
    losses[rng.uniform(size=3000) < 0.3] = 0.0  # ignored pixels: zero loss (k > 2100: ties at 0)
    losses = tf.constant(losses)
    assert float(kth_largest(losses, k)) == float(np.sort(losses.numpy())[::-1][k - 1])
    results = []
    for terms in (top_k_terms, _top_k_reference):
        with tf.GradientTape() as tape:
            tape.watch(losses)
            total, count = terms(losses, k)
        results.append((float(total), float(count), tape.gradient(total, losses).numpy()))
    (total, count, gradient), (ref_total, ref_count, ref_gradient) = results
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    assert count == ref_count
    positive = losses.numpy() > 0  # at zero-loss ties only the tie-breaking differs
    np.testing.assert_array_equal(gradient[positive], ref_gradient[positive])


def test_top_k_terms_share_the_weight_of_ties_at_the_threshold():
    losses = tf.constant([3.0, 2.0, 2.0, 2.0, 1.0])
    with tf.GradientTape() as tape:
        tape.watch(losses)
        total, count = top_k_terms(losses, 2)
    assert (float(total), float(count)) == (5.0, 2.0)
    np.testing.assert_allclose(tape.gradient(total, losses), [1, 1 / 3, 1 / 3, 1 / 3, 0])


def test_hard_example_mining_warm_up():
    """Official schedule: the kept fraction goes linearly from 100 % to top_k at the step."""
    logits, labels = _example()
    kwargs = {"top_k_percent_pixels": 0.25, "hard_example_mining_step": 100}
    for step, fraction in ((0, 1.0), (50, 0.625), (100, 0.25), (500, 0.25)):
        loss = segmentation_loss(labels, logits, step=tf.constant(step), **kwargs)
        np.testing.assert_allclose(float(loss), _numpy_top_k(logits, labels, fraction), rtol=1e-6)


def test_msc_loss_sums_fused_and_per_scale_outputs():
    model = keras_deeplab.DeepLabV2(
        backbone="mobilenetv2_dm05", num_classes=3, multi_scale=True, output_stride=16
    )
    images = random_images()
    labels = np.random.default_rng(1).integers(0, 3, (1, 33, 33)).astype("int32")
    outputs = model(images, training=True)
    assert sorted(outputs) == ["fused", "scale_0.5", "scale_0.75", "scale_1"]
    loss = float(segmentation_loss(labels, outputs))
    parts = [float(segmentation_loss(labels, outputs[k])) for k in outputs]
    np.testing.assert_allclose(loss, sum(parts), rtol=1e-6)
    assert len({round(p, 6) for p in parts}) > 1


def test_weight_decay_kernels_only_depthwise_and_bn_excluded():
    model = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2_dm05", num_classes=3)
    chosen = regularized_weights(model)
    paths = [v.path for v in chosen]
    convs = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__ == "Conv2D"
    ]
    depthwise = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__ == "DepthwiseConv2D"
    ]
    assert len(chosen) == len(convs) > 20 and len(depthwise) > 10
    assert any(p.endswith("logits_semantic/kernel") for p in paths)
    assert not any("depthwise" in p or "BatchNorm" in p or p.endswith("bias") for p in paths)
    with_depthwise = regularized_weights(model, regularize_depthwise=True)
    assert len(with_depthwise) == len(convs) + len(depthwise)
    expected = 4e-5 * sum(0.5 * np.sum(np.square(v.numpy())) for v in chosen)
    np.testing.assert_allclose(float(weight_decay_loss(chosen, 4e-5)), expected, rtol=1e-5)
    assert float(weight_decay_loss(chosen, 0.0)) == 0.0


def test_default_weight_decay_per_backbone():
    assert default_weight_decay("xception65") == 4e-5
    assert default_weight_decay("mobilenetv2_dm05") == 4e-5
    assert default_weight_decay("resnet101_beta") == 1e-4
    assert default_weight_decay("resnet101") == 5e-4  # DeepLab v2 Caffe solver
    assert default_weight_decay("vgg16") == 5e-4


def test_loss_in_float32_for_bfloat16_logits():
    logits, labels = _example()
    loss = segmentation_loss(labels, tf.cast(logits, tf.bfloat16))
    assert loss.dtype == tf.float32
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
