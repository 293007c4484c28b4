"""Schedules, the TF1 momentum optimizer, LR multipliers and the BatchNorm training modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab
from keras_deeplab.training import (
    Adam,
    Momentum,
    PolyDecay,
    ScheduleConfig,
    StepDecay,
    Trainer,
    batch_norm_layers,
    batch_norm_mode,
    build_schedule,
    gradient_multipliers,
)
from tests.training_helpers import config, micro_model, random_batches


def test_poly_values():
    schedule = PolyDecay(0.007, decay_steps=30000)
    values = [float(schedule(s)) for s in (0, 15000, 27000, 30000, 40000)]
    np.testing.assert_allclose(
        values, [0.007, 0.007 * 0.5**0.9, 0.007 * 0.1**0.9, 0.0, 0.0], rtol=1e-5
    )
    ended = PolyDecay(0.01, decay_steps=100, end_learning_rate=1e-4, power=1.0)
    np.testing.assert_allclose(float(ended(50)), 1e-4 + (0.01 - 1e-4) * 0.5, rtol=1e-6)


def test_poly_warm_up_official_slow_start():
    linear = PolyDecay(0.01, decay_steps=90, warmup_steps=10, warmup_learning_rate=0.001)
    expected = [0.001, 0.001 + 0.009 * 0.5, 0.01, 0.01 * 0.5**0.9, 0.0]
    got = [float(linear(s)) for s in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    constant = PolyDecay(0.01, 90, warmup_steps=10, warmup_learning_rate=0.001, warmup="constant")
    assert float(constant(9)) == pytest.approx(0.001)
    assert float(constant(10)) == pytest.approx(0.01)


def test_step_decay():
    schedule = StepDecay(1e-3, decay_steps=2000, decay_rate=0.1)
    got = [float(schedule(s)) for s in (0, 1999, 2000, 4500)]
    np.testing.assert_allclose(got, [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-5)


def test_schedules_serialize():
    for schedule in (
        PolyDecay(0.007, 1000, warmup_steps=5, warmup="constant"),
        StepDecay(0.01, 10, 0.5),
    ):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule)
        )
        assert type(restored) is type(schedule)
        assert restored.get_config() == schedule.get_config()
        assert float(restored(7)) == float(schedule(7))


def test_momentum_keeps_its_schedule_through_model_save_and_load(tmp_path):
    schedule = PolyDecay(0.007, 1000, warmup_steps=5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=Momentum(schedule, momentum=0.8), loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, batch_size=4, verbose=0)  # 3 steps
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").optimizer
    assert type(restored) is Momentum and restored.momentum == 0.8
    # still on the warm-up ramp at step 3: 1e-4 + (0.007 - 1e-4) * 3 / 5, not a constant 0.007
    assert float(restored.learning_rate) == pytest.approx(float(schedule(3)), rel=1e-6)
    assert int(restored.iterations.numpy()) == 3
    assert float(schedule(3)) == pytest.approx(0.00424)
    saved = keras.saving.deserialize_keras_object(restored.get_config()["learning_rate"])
    assert isinstance(saved, PolyDecay) and saved.get_config() == schedule.get_config()


def test_build_schedule_decays_over_steps_after_warm_up():
    schedule = build_schedule(ScheduleConfig(warmup_steps=100), 0.01, 1100)
    assert isinstance(schedule, PolyDecay) and schedule.decay_steps == 1000
    assert float(schedule(1100)) == 0.0
    step = build_schedule(ScheduleConfig(policy="step", decay_steps=3), 0.1, 10)
    assert float(step(3)) == pytest.approx(0.01)


def test_momentum_has_tf1_semantics():
    """accum = m * accum + g; w -= lr * accum, with a learning rate that changes each step."""
    variable = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer = Momentum(StepDecay(0.1, decay_steps=1, decay_rate=0.5), momentum=0.9)
    grads = [np.array([0.5, 1.0], "float32"), np.array([-1.0, 2.0], "float32")]
    w, accum = np.array([1.0, -2.0]), np.zeros(2)
    for i, g in enumerate(grads):
        optimizer.apply([tf.constant(g)], [variable])
        accum = 0.9 * accum + g
        w = w - 0.1 * 0.5**i * accum
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)


def _ops_of_one_update(optimizer, variables):
    @tf.function(autograph=False)
    def step(grads):
        optimizer.apply(grads, variables)

    graph = step.get_concrete_function([tf.TensorSpec(v.shape) for v in variables]).graph
    return [op.type for op in graph.get_operations()]


def test_fused_adam_equals_keras_adam_and_is_one_kernel_per_variable():
    """Same arithmetic as keras.optimizers.Adam (slots, bias correction, epsilon) over steps
    with a changing learning rate; each variable is updated by one ResourceApplyAdam."""
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype("float32") for s in ((3, 4), (4,))]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(4)]
    results = []
    for optimizer in (
        Adam(StepDecay(0.1, decay_steps=1, decay_rate=0.5)),
        keras.optimizers.Adam(StepDecay(0.1, decay_steps=1, decay_rate=0.5)),
    ):
        variables = [keras.Variable(w) for w in init]
        for g in grads:
            optimizer.apply([tf.constant(x) for x in g], variables)
        slots = [v.numpy() for v in optimizer.variables[1:]]  # after `iterations`
        results.append(([v.numpy() for v in variables], slots))
    (ours, our_slots), (keras_weights, keras_slots) = results
    for a, b in zip(our_slots, keras_slots, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The updates (0.1-0.3 here) agree to float32 rounding of the kernel's vectorised sqrt/divide.
    for a, b, w in zip(ours, keras_weights, init, strict=True):
        np.testing.assert_allclose(a - w, b - w, rtol=1e-4, atol=2e-6)
    assert np.abs(ours[0] - init[0]).max() > 0.1  # the updates did happen

    variables = [keras.Variable(w) for w in init]
    ops = _ops_of_one_update(Adam(1e-3), variables)
    assert ops.count("ResourceApplyAdam") == 2 and "AssignSubVariableOp" not in ops
    ops = _ops_of_one_update(Momentum(1e-3), [keras.Variable(w) for w in init])
    assert ops.count("ResourceApplyMomentum") == 2 and "AssignSubVariableOp" not in ops
    config = Adam(1e-3, beta_1=0.8).get_config()
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(Adam.from_config(config))
    )
    assert type(restored) is Adam and restored.get_config() == config


def test_gradient_multipliers_by_group():
    model = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2_dm05", num_classes=3)
    variables = model.trainable_variables
    factors = dict(
        zip(
            [v.path for v in variables],
            gradient_multipliers(
                model,
                variables,
                last_layer_multiplier=10.0,
                bias_multiplier=2.0,
                batch_norm_multiplier=0.5,
            ),
            strict=True,
        )
    )

    assert len(factors) == len(variables)
    assert factors["logits_semantic/kernel"] == 10.0
    assert factors["logits_semantic/bias"] == 20.0
    assert factors["aspp0/kernel"] == 10.0
    assert factors["aspp0_BatchNorm/gamma"] == 5.0  # last layer x BN factor
    assert factors["decoder_decoder_conv0_depthwise/kernel"] == 10.0
    assert factors["Conv/kernel"] == 1.0  # backbone stem
    assert factors["Conv_BatchNorm/beta"] == 0.5


def _one_step(tmp_path, name, init, **optimizer):
    def build():
        model = micro_model(dropout=0.0)
        model.set_weights(init)
        return model

    cfg = config(
        tmp_path / name,
        train={"steps": 1, "fine_tune_batch_norm": False},
        optimizer={"weight_decay": 1e-3, **optimizer},
    )
    trainer = Trainer(build, cfg)
    trainer.fit(random_batches(0, num_batches=1))
    return {
        v.path: v.numpy() - w for v, w in zip(trainer.model.weights, init, strict=True)
    }, trainer


def test_multipliers_scale_the_update(tmp_path):
    init = micro_model(dropout=0.0).get_weights()
    base, _ = _one_step(tmp_path, "base", init, last_layer_multiplier=1.0)
    last, _ = _one_step(tmp_path, "last", init, last_layer_multiplier=10.0)
    no_bias, _ = _one_step(tmp_path, "nobias", init, bias_multiplier=1.0)
    frozen, trainer = _one_step(tmp_path, "bn0", init, batch_norm_multiplier=0.0)
    for path in ("logits_semantic/kernel", "logits_semantic/bias", "aspp0/kernel"):
        assert np.abs(base[path]).max() > 0
        np.testing.assert_allclose(last[path], 10 * base[path], rtol=1e-4, atol=1e-6)
    for path in ("conv1/kernel", "conv2_depthwise/kernel"):
        np.testing.assert_allclose(last[path], base[path], rtol=1e-5, atol=1e-7)
    bias = "logits_semantic/bias"
    np.testing.assert_allclose(base[bias], 2 * no_bias[bias], rtol=1e-4, atol=1e-6)
    gamma = "conv1_BatchNorm/gamma"
    assert np.abs(base[gamma]).max() > 0 and np.all(frozen[gamma] == 0)
    assert not any("BatchNorm" in v.path for v in trainer.variables)


def test_frozen_batch_norm_uses_moving_statistics_and_trains_gamma_beta(tmp_path):
    init = micro_model(dropout=0.0).get_weights()
    delta, trainer = _one_step(tmp_path, "frozen", init)
    model = trainer.model
    for layer in batch_norm_layers(model):
        for name in ("moving_mean", "moving_variance"):
            assert np.all(delta[f"{layer.name}/{name}"] == 0), (layer.name, name)
        for name in ("gamma", "beta"):
            assert np.abs(delta[f"{layer.name}/{name}"]).max() > 0, (layer.name, name)
    images = next(iter(random_batches(1)))[0]
    with batch_norm_mode(model, fine_tune_batch_norm=False):
        frozen_train = model(images, training=True).numpy()
    np.testing.assert_array_equal(frozen_train, model(images, training=False).numpy())
    # Outside the context the layers are plain Keras BatchNorm again.
    assert all("call" not in layer.__dict__ for layer in batch_norm_layers(model))
    assert not np.allclose(model(images, training=True).numpy(), frozen_train)


def test_fine_tuned_batch_norm_updates_moving_statistics(tmp_path):
    cfg = config(
        tmp_path, train={"steps": 1, "fine_tune_batch_norm": True, "batch_norm_momentum": 0.0}
    )
    trainer = Trainer(lambda: micro_model(dropout=0.0, bn_momentum=0.99), cfg)
    model = trainer.model
    data = random_batches(0, num_batches=1)
    conv1 = keras.Model(model.input, model.get_layer("conv1").output)
    batch_mean = np.asarray(conv1(next(iter(data))[0])).mean(axis=(0, 1, 2))
    before = model.get_layer("conv1_BatchNorm").moving_mean.numpy().copy()
    trainer.fit(data)
    after = model.get_layer("conv1_BatchNorm").moving_mean.numpy()
    # Momentum 0 during training: the moving mean is the batch mean; 0.99 is restored after.
    assert np.abs(after - before).max() > 1e-2
    np.testing.assert_allclose(after, batch_mean, rtol=1e-4, atol=1e-5)
    assert {layer.momentum for layer in batch_norm_layers(model)} == {0.99}
    assert not trainer.sync_batch_norm  # one replica: nothing to synchronise


def test_a_keras_adam_checkpoint_restores_into_the_fused_adam(tmp_path):
    """Runs trained with `keras.optimizers.Adam` (before the fused update) resume: same slots."""
    weights = [keras.Variable(np.ones((3, 2), "float32"))]
    old = keras.optimizers.Adam(1e-2)
    for _ in range(3):
        old.apply([tf.constant(np.full((3, 2), 0.5, "float32"))], weights)
    path = tf.train.Checkpoint(optimizer=old, w=weights[0]).save(str(tmp_path / "c"))
    restored = [keras.Variable(np.zeros((3, 2), "float32"))]
    new = Adam(1e-2)
    new.build(restored)
    tf.train.Checkpoint(optimizer=new, w=restored[0]).restore(path).assert_consumed()
    assert int(new.iterations.numpy()) == 3
    for a, b in zip(old.variables, new.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(restored[0].numpy(), weights[0].numpy())
