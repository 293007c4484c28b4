"""Inference optimisations: BatchNorm folding and reduced-precision copies."""

import keras
import numpy as np
import pytest
from conftest import random_images, randomize_batch_norms

import keras_deeplab
from keras_deeplab.layers import Conv2D, DepthwiseConv2D
from keras_deeplab.msc import MultiScaleInputs
from keras_deeplab.optimize import (
    MaximumReLU,
    SpaceToBatchDepthwiseConv2D,
    conv_bn_pairs,
    count_batch_norms,
    fold_batch_norm,
    optimize_for_inference,
    shared_sum_relus,
    with_dtype_policy,
)


def _max_rel_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))


@pytest.mark.parametrize(
    "name",
    [
        "deeplabv3_mobilenetv2_dm05",  # v3, depthwise convs
        "deeplabv3plus_resnet50",  # v3+, ResNet
        "deeplabv2_resnet50_aspp_l",  # v2, ASPP-L
        "deeplabv3plus_xception41",  # v3+, Xception (separable = depthwise + BN + 1x1 + BN)
    ],
)
def test_fold_batch_norm_matches_each_family(name):
    model = randomize_batch_norms(keras_deeplab.create_model(name, num_classes=5))
    x = random_images(1, 65)
    before = np.asarray(model(x, training=False))
    folded = fold_batch_norm(model)
    assert count_batch_norms(model) > 0
    assert count_batch_norms(folded) == 0  # every BN of these models follows a conv
    after = np.asarray(folded(x, training=False))
    assert after.shape == before.shape == (1, 65, 65, 5)
    assert _max_rel_diff(before, after) <= 1e-4
    # The original is untouched: its BNs still run and give the same result.
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), before)
    # Sub-model names survive (export code finds the backbone by name).
    assert {m.name for m in model.layers if isinstance(m, keras.Model)} == {
        m.name for m in folded.layers if isinstance(m, keras.Model)
    }


def _space_to_batch_layers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _space_to_batch_layers(layer)
        elif isinstance(layer, SpaceToBatchDepthwiseConv2D):
            found.append(layer.name)
    return found


def test_optimize_for_inference_runs_large_rate_depthwise_through_space_to_batch():
    # DeepLabV3+ separable ASPP: depthwise rates 6, 12, 18 at OS16; 8 and more are rewritten.
    model = randomize_batch_norms(
        keras_deeplab.create_model("deeplabv3plus_resnet50", num_classes=5), seed=2
    )
    fast = optimize_for_inference(model)
    assert sorted(_space_to_batch_layers(fast)) == ["aspp2_depthwise", "aspp3_depthwise"]
    assert count_batch_norms(fast) == 0
    assert _space_to_batch_layers(fold_batch_norm(model)) == []
    x = random_images(2, 97)
    assert _max_rel_diff(model(x, training=False), fast(x, training=False)) <= 1e-4
    # Without BN after it (fold=False), the rewrite keeps the layer's own weights.
    unfolded = optimize_for_inference(model, fold=False)
    assert count_batch_norms(unfolded) == count_batch_norms(model)
    assert len(_space_to_batch_layers(unfolded)) == 2
    assert _max_rel_diff(model(x, training=False), unfolded(x, training=False)) <= 1e-4


def test_fold_batch_norm_without_batch_norms_is_identity_function():
    model = keras_deeplab.create_model("deeplabv1_vgg16_largefov", num_classes=3)
    folded = fold_batch_norm(model)
    x = random_images(1, 33)
    np.testing.assert_allclose(folded(x), model(x), atol=1e-6)
    assert count_batch_norms(folded) == 0


def test_fold_batch_norm_msc_wrapper():
    model = keras_deeplab.create_model("deeplabv2_resnet50_aspp_l", num_classes=4)
    msc = randomize_batch_norms(MultiScaleInputs(model, scales=(1.0, 0.5)))
    folded = fold_batch_norm(msc)
    assert isinstance(folded, MultiScaleInputs) and folded.scales == (1.0, 0.5)
    assert count_batch_norms(folded) == 0
    x = random_images(1, 49)
    assert _max_rel_diff(msc(x, training=False), folded(x, training=False)) <= 1e-4


def _handmade():
    """Depth multiplier 2, grouped conv, a conv with activation, a conv with two consumers."""
    inputs = keras.Input((17, 19, 4))
    x = DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(inputs)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = Conv2D(6, 1, groups=2, use_bias=True, name="grouped")(x)
    x = keras.layers.BatchNormalization(name="grouped_bn")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="relu_conv")(x)
    x = keras.layers.BatchNormalization(name="after_relu_bn")(x)  # not foldable (activation)
    shared = keras.layers.Conv2D(6, 1, name="shared")(x)
    y = keras.layers.BatchNormalization(name="shared_bn")(shared)  # not foldable: 2 consumers
    z = keras.layers.Add(name="add")([y, shared])
    x = keras.layers.Conv2D(3, 3, padding="same", dilation_rate=2, name="last")(z)
    outputs = keras.layers.BatchNormalization(name="last_bn", center=False, scale=False)(x)
    return keras.Model(inputs, outputs, name="handmade")


def test_fold_rules_on_handmade_graph():
    model = randomize_batch_norms(_handmade(), seed=3)
    pairs = conv_bn_pairs(model)
    assert {k: v.name for k, v in pairs.items()} == {
        "dw": "dw_bn",
        "grouped": "grouped_bn",
        "last": "last_bn",
    }
    folded = fold_batch_norm(model)
    names = {layer.name for layer in folded.layers}
    assert {"after_relu_bn", "shared_bn"} <= names
    assert not names & {"dw_bn", "grouped_bn", "last_bn"}
    assert folded.get_layer("dw").use_bias and folded.get_layer("grouped").groups == 2
    x = np.random.default_rng(1).normal(0, 1, (2, 17, 19, 4)).astype("float32")
    assert _max_rel_diff(model(x, training=False), folded(x, training=False)) <= 1e-5


def test_bfloat16_copy_computes_in_bfloat16_with_float32_output():
    model = randomize_batch_norms(
        keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05", num_classes=5)
    )
    fast = optimize_for_inference(model, fold=True, dtype_policy="mixed_bfloat16")
    plain = with_dtype_policy(model)
    for m in (fast, plain):
        convs = [
            layer
            for sub in m.layers
            if isinstance(sub, keras.Model)
            for layer in sub.layers
            if isinstance(layer, keras.layers.Conv2D)
        ]
        assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
        assert m.get_layer("upsampled_logits").compute_dtype == "float32"  # logits resize
    assert all(w.dtype == "float32" for w in plain.weights)  # trainable: float32 variables
    # The inference graph stores its conv weights in bfloat16 (no per-call casts) ...
    assert {w.dtype for w in fast.weights} == {"bfloat16"}
    # ... the values a mixed policy casts to: outputs equal the float32-variable graph's.
    mixed = with_dtype_policy(fold_batch_norm(model), "mixed_bfloat16")
    assert {w.dtype for w in mixed.weights} == {"float32"}
    x = random_images(1, 65)
    np.testing.assert_array_equal(fast(x, training=False), mixed(x, training=False))
    assert count_batch_norms(fast) == 0 and count_batch_norms(plain) > 0
    x = random_images(1, 65)
    reference = np.asarray(model(x, training=False))
    out = fast(x, training=False)
    assert out.dtype == "float32" and out.shape == reference.shape
    # bfloat16 has 8 bits of mantissa: close, not equal.
    assert _max_rel_diff(reference, out) < 0.05
    assert not np.array_equal(reference, np.asarray(out))


def test_optimize_rejects_subclassed_models():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional"):
        fold_batch_norm(Net())


def _residual_units(shared):
    """Two pre-activation units: `add -> relu -> conv` and, when `shared`, `add -> next add`
    (Xception's pattern); else every sum feeds only its ReLU (ResNet's post-activation)."""
    inputs = keras.Input((None, None, 4))
    x = inputs
    for i in range(2):
        y = keras.layers.ReLU(name=f"relu{i}")(x)
        y = Conv2D(4, 1, name=f"conv{i}")(y)
        y = keras.layers.BatchNormalization(name=f"bn{i}")(y)
        x = keras.layers.Add(name=f"add{i}")([x, y])
        if not shared:
            x = keras.layers.ReLU(name=f"post_relu{i}")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="out_relu")(x))


def test_relu_after_a_shared_residual_sum_becomes_a_maximum():
    """TF's CPU remapper fails on `conv -> BiasAdd -> Add -> Relu` when the Add feeds more
    than the Relu and then fuses nothing in the graph; the rewrite avoids the pattern."""
    model = randomize_batch_norms(_residual_units(shared=True), seed=1)
    assert shared_sum_relus(model) == {"relu1"}  # add0 feeds relu1 and add1; relu0 reads input
    assert shared_sum_relus(_residual_units(shared=False)) == set()
    fast = optimize_for_inference(model)
    assert isinstance(fast.get_layer("relu1"), MaximumReLU)
    assert type(fast.get_layer("out_relu")) is keras.layers.ReLU  # add1 feeds out_relu only
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    assert _max_rel_diff(model(x, training=False), fast(x, training=False)) <= 1e-5
    # Not a TFLite rewrite: fold_batch_norm (the export's graph) keeps the ReLU.
    assert type(fold_batch_norm(model).get_layer("relu1")) is keras.layers.ReLU
    # An optimised model saves and loads with the rewritten layer.
    assert isinstance(keras.models.clone_model(fast).get_layer("relu1"), MaximumReLU)


def test_xception_inference_graph_rewrites_its_shared_sums():
    model = keras_deeplab.create_model("deeplabv3plus_xception41", num_classes=3)
    fast = optimize_for_inference(model)
    backbone = next(layer for layer in fast.layers if isinstance(layer, keras.Model))
    rewritten = [layer.name for layer in backbone.layers if isinstance(layer, MaximumReLU)]
    assert len(rewritten) >= 8  # the middle flow's units: the next unit's input ReLU
    x = random_images(1, 65)
    assert _max_rel_diff(model(x, training=False), fast(x, training=False)) <= 1e-4
