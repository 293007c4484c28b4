"""ImageNet backbone weights (`backbone_weights=`) from keras.applications files.

No downloads: the keras.applications models are built with `weights=None`,
randomised (BN moving statistics too) and saved to `tmp_path`.
"""

import h5py
import keras
import numpy as np
import pytest
from conftest import randomize_batch_norms

import keras_deeplab
from keras_deeplab.backbones import get_backbone
from keras_deeplab.weights.imagenet import (
    MOBILENETV2_IGNORED,
    load_backbone_weights,
    mobilenetv2_name_map,
)

APPS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "mobilenetv2": keras.applications.MobileNetV2,
    "vgg16": keras.applications.VGG16,
}
# keras.applications layer compared with our backbone's "final" tap.
FINAL_LAYER = {"resnet50": None, "resnet101": None, "mobilenetv2": "block_16_project_BN"}
SIZES = [(65, 65), (66, 70)]


def _application(name, size=None, seed=0):
    """keras.applications model with random weights and random BN statistics."""
    kwargs = {"include_top": False, "weights": None}
    if size is not None:
        kwargs["input_shape"] = (*size, 3)
    return randomize_batch_norms(APPS[name](**kwargs), seed)


def save_legacy_h5(model, path):
    """Writes the Keras 2 weights-only HDF5 layout of keras.applications' downloads.

    Keras 3 refuses `save_weights("x.h5")`; this is the layout of
    `..._weights_tf_dim_ordering_tf_kernels_notop.h5`: root attrs `layer_names`
    (every layer), one group per layer with attr `weight_names` and one dataset
    per weight (kernel, bias; gamma, beta, moving_mean, moving_variance).
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            variables = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{v.name}:0" for v in variables]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, v in zip(names, variables, strict=True):
                group.create_dataset(n, data=keras.ops.convert_to_numpy(v))


def _reference(app, name):
    out = FINAL_LAYER[name]
    return app if out is None else keras.Model(app.input, app.get_layer(out).output)


def _assert_same_final(app, backbone, name, size):
    x = np.random.default_rng(1).normal(size=(1, *size, 3)).astype("float32")
    # Eager calls: `predict` would trace both networks for one batch (suite time).
    ref = np.asarray(_reference(app, name)(x, training=False))
    ours = np.asarray(backbone(x, training=False)["final"])
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 0.1  # a real signal, not zeros
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, size",
    [
        # suite time: one size per network by default (10-18 s each); the rest under -m slow
        (name, size)
        if size == SIZES[0] and name != "resnet101"
        else pytest.param(name, size, marks=pytest.mark.slow)
        for name in ("resnet50", "resnet101", "mobilenetv2")
        for size in SIZES
    ],
)
def test_keras3_file_final_features_equal(tmp_path, name, size):
    app = _application(name, size)
    path = tmp_path / f"{name}.weights.h5"
    app.save_weights(path)
    backbone = get_backbone(name, input_shape=(*size, 3), output_stride=32)
    load_backbone_weights(backbone, name, str(path))
    _assert_same_final(app, backbone, name, size)


@pytest.mark.parametrize(
    "name",
    # suite time: 9 s; the Keras 3 file test keeps the ResNet-50 name map in the default run
    [pytest.param("resnet50", marks=pytest.mark.slow), "mobilenetv2"],
)
def test_legacy_h5_file_final_features_equal(tmp_path, name):
    size = (65, 65)
    app = _application(name, size, seed=3)
    path = tmp_path / f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    save_legacy_h5(app, path)
    backbone = get_backbone(name, input_shape=(*size, 3), output_stride=32)
    load_backbone_weights(backbone, name, str(path))
    _assert_same_final(app, backbone, name, size)


def test_vgg16_every_conv_lands_and_block1_outputs_equal(tmp_path):
    app = _application("vgg16", (65, 65))
    path = tmp_path / "vgg16.weights.h5"
    app.save_weights(path)
    backbone = get_backbone("vgg16", input_shape=(65, 65, 3), output_stride=8)
    load_backbone_weights(backbone, "vgg16", str(path))
    convs = [layer for layer in app.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13
    for layer in convs:
        for ref, ours in zip(
            layer.get_weights(), backbone.get_layer(layer.name).get_weights(), strict=True
        ):
            assert np.array_equal(ref, ours), layer.name
    x = np.random.default_rng(2).normal(size=(1, 65, 65, 3)).astype("float32")
    ref = np.asarray(keras.Model(app.input, app.get_layer("block1_conv2").output)(x))
    ours = np.asarray(keras.Model(backbone.input, backbone.get_layer("block1_conv2").output)(x))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_mobilenetv2_name_map_covers_every_application_layer():
    app = _application("mobilenetv2", (96, 96))
    backbone = get_backbone("mobilenetv2", output_stride=16)
    names = mobilenetv2_name_map()
    weighted = [layer.name for layer in app.layers if layer.weights]
    mapped = {names[n] for n in weighted if n not in MOBILENETV2_IGNORED}
    ours = {layer.name for layer in backbone.layers if layer.weights}
    assert mapped == ours
    assert len(ours) == 102  # 51 convs + 51 BN: Conv, 2 in expanded_conv, 3 in each of 16


def test_deeplab_builder_takes_backbone_weights_path(tmp_path):
    app = _application("mobilenetv2", (96, 96), seed=5)
    path = tmp_path / "mnv2.weights.h5"
    app.save_weights(path)
    model = keras_deeplab.DeepLabV3Plus(
        backbone="mobilenetv2", num_classes=3, backbone_weights=str(path)
    )
    backbone = model.get_layer("mobilenetv2_backbone")
    for ref_name, our_name in [
        ("bn_Conv1", "Conv_BatchNorm"),
        ("block_16_project", "expanded_conv_16_project"),
    ]:
        for ref, ours in zip(
            app.get_layer(ref_name).get_weights(),
            backbone.get_layer(our_name).get_weights(),
            strict=True,
        ):
            assert np.array_equal(ref, ours)


def test_own_backbone_file_and_full_model_file(tmp_path):
    """A file saved from this package's model (sub-model selected by name) fits any backbone."""
    source = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", num_classes=4)
    for variable in source.weights:
        variable.assign(np.random.default_rng(7).normal(size=variable.shape).astype("float32"))
    path = tmp_path / "full.weights.h5"
    source.save_weights(path)
    backbone = get_backbone("mobilenetv2_dm05", output_stride=8)
    load_backbone_weights(backbone, "mobilenetv2_dm05", str(path))
    expected = source.get_layer("mobilenetv2_dm05_backbone")
    for layer in expected.layers:
        for ref, ours in zip(
            layer.get_weights(), backbone.get_layer(layer.name).get_weights(), strict=True
        ):
            assert np.array_equal(ref, ours), layer.name


def test_unsupported_backbones_explain_official_checkpoints():
    backbone = get_backbone("mobilenetv2_dm05", output_stride=16)
    with pytest.raises(ValueError, match="alpha=0.5 rounds channels"):
        load_backbone_weights(backbone, "mobilenetv2_dm05", "imagenet")
    for name in ("xception65", "resnet101_beta"):
        with pytest.raises(ValueError, match="load_tf_checkpoint.*--from-tf-checkpoint"):
            load_backbone_weights(backbone, name, "imagenet")
    with pytest.raises(ValueError, match="official TF checkpoints"):
        keras_deeplab.DeepLabV3Plus(backbone="xception41", backbone_weights="imagenet")


def test_bad_files_give_one_clear_error(tmp_path):
    backbone = get_backbone("resnet50", output_stride=32)
    before = [w.copy() for w in backbone.get_weights()]
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        load_backbone_weights(backbone, "resnet50", str(missing))

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(ValueError, match="Cannot read weights file .*garbage.h5"):
        load_backbone_weights(backbone, "resnet50", str(garbage))

    # Another architecture: a MobileNetV2 file into ResNet-50, both formats.
    app = _application("mobilenetv2", (96, 96))
    keras3 = tmp_path / "mnv2.weights.h5"
    app.save_weights(keras3)
    with pytest.raises(ValueError, match=r"mnv2.weights.h5' does not match.*conv1_conv"):
        load_backbone_weights(backbone, "resnet50", str(keras3))
    legacy = tmp_path / "mnv2_notop.h5"
    save_legacy_h5(app, legacy)
    with pytest.raises(
        ValueError, match=r"mnv2_notop.h5' does not fit keras.applications.ResNet50"
    ):
        load_backbone_weights(backbone, "resnet50", str(legacy))
    # Rejected files leave the backbone untouched.
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone.get_weights(), strict=True))


def test_resnet50_file_into_resnet101_is_rejected(tmp_path):
    app = _application("resnet50")
    path = tmp_path / "r50.weights.h5"
    app.save_weights(path)
    backbone = get_backbone("resnet101", output_stride=32)
    with pytest.raises(ValueError, match=r"r50.weights.h5' does not match.*not in the file"):
        load_backbone_weights(backbone, "resnet101", str(path))


def test_keras3_file_with_classifier_top_loads(tmp_path):
    app = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(96, 96, 3))
    path = tmp_path / "mnv2_top.weights.h5"
    app.save_weights(path)
    backbone = get_backbone("mobilenetv2", output_stride=16)
    load_backbone_weights(backbone, "mobilenetv2", str(path))
    for ref, ours in zip(
        app.get_layer("block_16_project_BN").get_weights(),
        backbone.get_layer("expanded_conv_16_project_BatchNorm").get_weights(),
        strict=True,
    ):
        assert np.array_equal(ref, ours)
