"""`weights=`: `.weights.h5` files and named presets, matched by layer name."""

import warnings

import numpy as np
import pytest
from conftest import random_images, randomize_weights

import keras_deeplab
from keras_deeplab.weights.loading import load_weights, model_layers
from keras_deeplab.weights.presets import (
    PRESETS,
    WEIGHTS_DIR_ENV,
    list_presets,
    presets_markdown,
    resolve_weights,
)

BACKBONE = "mobilenetv2_dm05"


def _by_name(model):
    return {
        path[-1]: [np.asarray(v) for v in layer.get_weights()]
        for path, layer in model_layers(model)[0].items()
    }


def _assert_equal(a, b, skip=()):
    wa, wb = _by_name(a), _by_name(b)
    assert set(wa) == set(wb)
    for name in wa:
        if name in skip:
            continue
        for x, y in zip(wa[name], wb[name], strict=True):
            assert x.shape == y.shape and np.array_equal(x, y), name


def _saved(model, path, seed=0):
    randomize_weights(model, seed)
    model.save_weights(path)
    return str(path)


def test_round_trip_same_classes_is_bitwise(tmp_path):
    source = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=21)
    path = _saved(source, tmp_path / "v3p.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=21, weights=path)
    _assert_equal(source, target)
    x = random_images(1, 65)
    assert np.array_equal(np.asarray(source(x)), np.asarray(target(x)))


def test_other_class_count_loads_all_but_logits_with_one_warning(tmp_path):
    source = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=21)
    path = _saved(source, tmp_path / "voc.weights.h5")
    target = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=5)
    logits_before = [w.copy() for w in target.get_layer("logits_semantic").get_weights()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_weights(target, path)
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "logits_semantic" in message and "21 classes" in message and "5" in message
    _assert_equal(source, target, skip={"logits_semantic"})
    for before, after in zip(
        logits_before, target.get_layer("logits_semantic").get_weights(), strict=True
    ):
        assert after.shape[-1] == 5 and np.array_equal(before, after)
    # Backbone, ASPP and decoder really carry the file's values.
    ref = source.get_layer("decoder_decoder_conv1_pointwise").get_weights()[0]
    assert np.array_equal(target.get_layer("decoder_decoder_conv1_pointwise").get_weights()[0], ref)


def test_plain_file_loads_into_a_model_with_training_only_heads(tmp_path):
    """Fine-tuning with deep supervision (`aux_head=True`) from weights of the plain network:
    every network layer loads, the new classifiers keep their initial weights, one warning."""
    source = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=21)
    path = _saved(source, tmp_path / "v3.weights.h5")
    kwargs = {"backbone": BACKBONE, "aux_head": True, "aux_taps": ("stride_8", "final")}
    target = keras_deeplab.DeepLabV3(num_classes=11, **kwargs)
    graph = target._training_graph
    aux = ["aux_final_logits", "aux_stride_8_logits"]
    before = {name: [w.copy() for w in graph.get_layer(name).get_weights()] for name in aux}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_weights(target, path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # the new classifiers; the logits' class count
    heads = "training-only auxiliary classifier(s) (aux_final_logits, aux_stride_8_logits)"
    assert sum(heads in m for m in messages) == 1, messages
    assert sum("logits_semantic" in m and "21 classes" in m for m in messages) == 1, messages
    for name in aux:
        for a, b in zip(before[name], graph.get_layer(name).get_weights(), strict=True):
            assert np.array_equal(a, b), name
    ref = source.get_layer("aspp0").get_weights()[0]
    assert np.array_equal(target.get_layer("aspp0").get_weights()[0], ref)
    # Same classes: no logits warning, and the network's outputs are the file's.
    same = keras_deeplab.DeepLabV3(num_classes=21, **kwargs)
    with pytest.warns(UserWarning, match="training-only auxiliary"):
        load_weights(same, path)
    x = random_images(1, 33)
    assert np.array_equal(np.asarray(source(x)), np.asarray(same(x)))


def test_file_with_other_training_only_heads_is_rejected(tmp_path):
    kwargs = {"backbone": BACKBONE, "num_classes": 21, "aux_head": True}
    source = keras_deeplab.DeepLabV3(aux_taps=("final",), **kwargs)
    path = _saved(source, tmp_path / "aux.weights.h5")
    target = keras_deeplab.DeepLabV3(aux_taps=("stride_8", "final"), **kwargs)
    with pytest.raises(ValueError, match=r"not in the file \(aux_stride_8_logits\)"):
        load_weights(target, path)


def test_v2_four_logits_branches_are_all_skipped(tmp_path):
    source = keras_deeplab.DeepLabV2(backbone=BACKBONE, num_classes=21)
    path = _saved(source, tmp_path / "v2.weights.h5")
    target = keras_deeplab.DeepLabV2(backbone=BACKBONE, num_classes=3)
    with pytest.warns(
        UserWarning, match=r"logits_semantic, logits_semantic_1, .*logits_semantic_3"
    ):
        load_weights(target, path)
    _assert_equal(
        source, target, skip={"logits_semantic", *(f"logits_semantic_{i}" for i in (1, 2, 3))}
    )


def test_file_of_another_backbone_is_one_clear_error(tmp_path):
    path = _saved(
        keras_deeplab.DeepLabV3(backbone="mobilenetv2", num_classes=21), tmp_path / "a.weights.h5"
    )
    target = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=21)
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError) as error:
        load_weights(target, path)
    message = str(error.value)
    assert "a.weights.h5" in message
    assert "mobilenetv2_backbone" in message and "mobilenetv2_dm05_backbone" in message
    assert (
        "differ in shape" in message
        and "Conv: file (3, 3, 3, 32) vs model (3, 3, 3, 16)" in message
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, target.get_weights(), strict=True))


def test_file_of_another_head_is_rejected(tmp_path):
    path = _saved(
        keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=21), tmp_path / "v3.weights.h5"
    )
    target = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=21)
    with pytest.raises(
        ValueError, match=r"v3.weights.h5' does not match.*not in the file.*decoder"
    ):
        load_weights(target, path)


def test_not_a_weights_file(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_text("hello")
    model = keras_deeplab.DeepLabV3(backbone=BACKBONE)
    with pytest.raises(ValueError, match="Cannot read weights file .*bad.weights.h5"):
        load_weights(model, str(bad))
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load_weights(model, str(tmp_path / "nope.weights.h5"))


def test_create_model_and_msc_use_the_loader(tmp_path):
    single = keras_deeplab.DeepLabV2(backbone=BACKBONE, num_classes=21)
    path = _saved(single, tmp_path / "v2.weights.h5", seed=3)
    msc = keras_deeplab.DeepLabV2(backbone=BACKBONE, num_classes=21, multi_scale=True, weights=path)
    assert isinstance(msc, keras_deeplab.MultiScaleInputs)
    _assert_equal(single, msc)
    # And back: a file saved from the MSC model loads into the single-scale one.
    msc_path = _saved(msc, tmp_path / "msc.weights.h5", seed=4)
    created = keras_deeplab.create_model(
        "deeplabv2_resnet101_aspp_l", backbone=BACKBONE, weights=msc_path
    )
    _assert_equal(msc, created)


def test_preset_resolution_via_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "presets"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    name = "pascal_voc_mnv2_dm05_os8"
    source = keras_deeplab.create_model(PRESETS[name]["model"])
    (tmp_path / "presets").mkdir()
    _saved(source, tmp_path / "presets" / f"{name}.weights.h5", seed=9)
    assert resolve_weights(name) == str(tmp_path / "presets" / f"{name}.weights.h5")
    model = keras_deeplab.create_model(PRESETS[name]["model"], weights=name)
    _assert_equal(source, model)


def test_preset_falls_back_to_home_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / ".keras" / "keras_deeplab"
    folder.mkdir(parents=True)
    (folder / "cityscapes_xception65.weights.h5").write_bytes(b"")
    assert resolve_weights("cityscapes_xception65") == str(
        folder / "cityscapes_xception65.weights.h5"
    )


def test_missing_preset_file_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "presets"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as error:
        keras_deeplab.create_model(
            "deeplabv3_mobilenetv2_dm05_os8", weights="pascal_voc_mnv2_dm05_os8"
        )
    message = str(error.value)
    assert str(tmp_path / "presets" / "pascal_voc_mnv2_dm05_os8.weights.h5") in message
    assert str(tmp_path / "home" / ".keras" / "keras_deeplab") in message
    assert "keras-deeplab convert --from-tflite deeplabv3_257_mv_gpu.tflite --out" in message


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="Presets: .*pascal_voc_mnv2_dm05_os8"):
        resolve_weights("pascal_voc_nonexistent")


def test_backbone_preset_is_for_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    model = keras_deeplab.DeepLabV3(backbone=BACKBONE)
    with pytest.raises(ValueError, match="backbone_weights='imagenet_resnet101_beta'"):
        load_weights(model, "imagenet_resnet101_beta")


def test_preset_registry_is_consistent():
    models = set(keras_deeplab.list_models())
    assert {"pascal_voc_mnv2_dm05_os8", "pascal_voc_xception65", "cityscapes_xception65"} <= set(
        list_presets()
    )
    assert "imagenet_resnet101_beta" in list_presets("backbone")
    for name, preset in PRESETS.items():
        assert preset["model"] in models, name
        assert "{path}" in preset["command"], name
        if preset["kind"] == "model":
            assert preset["num_classes"] in (19, 21, 151), name
    table = presets_markdown()
    assert table.count("\n") == len(PRESETS) + 1


def test_keras_archive_loads_too(tmp_path):
    source = randomize_weights(keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=3), seed=11)
    source.save(tmp_path / "model.keras")
    target = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=3)
    load_weights(target, str(tmp_path / "model.keras"))
    _assert_equal(source, target)


def _fit_one_step(model, optimizer):
    """One `fit` step of the compiled model, so its optimizer holds state."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 33, 33))
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    return x


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
@pytest.mark.parametrize("optimizer", ["adam", "loss_scale"])
def test_plain_keras_save_of_a_compiled_model_loads(tmp_path, optimizer):
    import h5py
    import keras

    name = "deeplabv3_mobilenetv2_dm05_os8"
    source = keras_deeplab.create_model(name, num_classes=3)
    opt = keras.optimizers.Adam(1e-3)
    if optimizer == "loss_scale":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    x = _fit_one_step(source, opt)
    assert source.optimizer.iterations.numpy() == 1
    source.save(tmp_path / "m.keras")
    source.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5") as handle:  # the layout this test is about
        assert "optimizer" in handle and len(handle["optimizer/vars"]) > 0
    expected = np.asarray(source(x, training=False))
    for path in (tmp_path / "m.keras", tmp_path / "m.weights.h5"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = keras_deeplab.create_model(name, num_classes=3, weights=str(path))
        assert np.array_equal(np.asarray(loaded(x, training=False)), expected), path.name
