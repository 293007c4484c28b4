"""Official TF1 checkpoint converter: names (checked literally against the official slim
scopes, reference §3), bitwise round trips through TF1 checkpoints, and clear errors."""

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images, randomize_weights
from tf1_checkpoints import model_variables, write_model_checkpoint, write_tf1_checkpoint

from keras_deeplab.backbones import get_backbone
from keras_deeplab.models import create_model
from keras_deeplab.weights import load_tf_checkpoint
from keras_deeplab.weights.checkpoint import (
    convert_tf_checkpoint,
    inspect_tf_checkpoint,
    is_ignored_variable,
    network_scope,
    official_variable_names,
)

BN = ("gamma", "beta", "moving_mean", "moving_variance")
# Slim variable name -> Keras weight name.
KERAS_WEIGHT = {"weights": "kernel", "depthwise_weights": "kernel", "biases": "bias"} | {
    v: v for v in BN
}


# --- Independent spec of the official names (reference §3), not derived from the model ---


def _conv(scope):
    return [f"{scope}/weights"] + [f"{scope}/BatchNorm/{v}" for v in BN]


def _dw(scope):
    return [f"{scope}/depthwise_weights"] + [f"{scope}/BatchNorm/{v}" for v in BN]


def _spec_xception(depth):
    net = f"xception_{depth}"
    names = _conv(f"{net}/entry_flow/conv1_1") + _conv(f"{net}/entry_flow/conv1_2")
    entry = 5 if depth == 71 else 3
    blocks = [(f"entry_flow/block{b}", 1, True) for b in range(1, entry + 1)]
    blocks += [("middle_flow/block1", 8 if depth == 41 else 16, False)]
    blocks += [("exit_flow/block1", 1, True), ("exit_flow/block2", 1, False)]
    for block, units, shortcut in blocks:
        for u in range(1, units + 1):
            module = f"{net}/{block}/unit_{u}/xception_module"
            for i in (1, 2, 3):
                names += _dw(f"{module}/separable_conv{i}_depthwise")
                names += _conv(f"{module}/separable_conv{i}_pointwise")
            if shortcut:
                names += _conv(f"{module}/shortcut")
    return names


def _spec_resnet(depth):
    net = f"resnet_v1_{depth}"
    names = _conv(f"{net}/conv1_1") + _conv(f"{net}/conv1_2") + _conv(f"{net}/conv1_3")
    units = (3, 4, 6, 3) if depth == 50 else (3, 4, 23, 3)
    for b, n in enumerate(units, start=1):
        for u in range(1, n + 1):
            unit = f"{net}/block{b}/unit_{u}/bottleneck_v1"
            names += _conv(f"{unit}/shortcut") if u == 1 else []
            names += _conv(f"{unit}/conv1") + _conv(f"{unit}/conv2") + _conv(f"{unit}/conv3")
    return names


def _spec_mobilenet_v2():
    names = _conv("MobilenetV2/Conv")
    names += _dw("MobilenetV2/expanded_conv/depthwise") + _conv("MobilenetV2/expanded_conv/project")
    for i in range(1, 17):
        block = f"MobilenetV2/expanded_conv_{i}"
        names += _conv(f"{block}/expand") + _dw(f"{block}/depthwise") + _conv(f"{block}/project")
    return names


def _spec_head(atrous_branches, decoder):
    names = _conv("image_pooling") + _conv("aspp0")
    for i in range(1, atrous_branches + 1):
        names += _dw(f"aspp{i}_depthwise") + _conv(f"aspp{i}_pointwise")
    names += _conv("concat_projection")
    if decoder:
        names += _conv("decoder/feature_projection0")
        for i in (0, 1):
            names += _dw(f"decoder/decoder_conv{i}_depthwise")
            names += _conv(f"decoder/decoder_conv{i}_pointwise")
    return names + ["logits/semantic/weights", "logits/semantic/biases"]


SPECS = {
    "deeplabv3plus_xception65": lambda: _spec_xception(65) + _spec_head(3, True),
    "deeplabv3plus_xception41": lambda: _spec_xception(41) + _spec_head(3, True),
    "deeplabv3plus_xception71": lambda: _spec_xception(71) + _spec_head(3, True),
    "deeplabv3_mobilenetv2": lambda: _spec_mobilenet_v2() + _spec_head(0, False),
    "deeplabv3plus_resnet101_beta": lambda: _spec_resnet(101) + _spec_head(3, True),
    "deeplabv3plus_resnet50_beta": lambda: _spec_resnet(50) + _spec_head(3, True),
    "deeplabv3_resnet101_beta": lambda: _spec_resnet(101) + _spec_head(3, False),
}

# Literal names and shapes from the reference (§3) and the official code.
LITERAL = {
    "deeplabv3plus_xception65": {
        "xception_65/entry_flow/conv1_1/weights": [3, 3, 3, 32],
        "xception_65/entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise/"
        "BatchNorm/gamma": [256],
        "xception_65/middle_flow/block1/unit_16/xception_module/separable_conv3_depthwise/"
        "depthwise_weights": [3, 3, 728, 1],
        "xception_65/exit_flow/block2/unit_1/xception_module/separable_conv3_pointwise/weights": [
            1,
            1,
            1536,
            2048,
        ],
        "image_pooling/weights": [1, 1, 2048, 256],
        "aspp1_depthwise/depthwise_weights": [3, 3, 2048, 1],
        "aspp3_pointwise/weights": [1, 1, 2048, 256],
        "concat_projection/weights": [1, 1, 1280, 256],
        "decoder/feature_projection0/weights": [1, 1, 256, 48],
        "decoder/decoder_conv0_depthwise/depthwise_weights": [3, 3, 304, 1],
        "decoder/decoder_conv0_pointwise/weights": [1, 1, 304, 256],
        "decoder/decoder_conv1_pointwise/BatchNorm/moving_variance": [256],
        "logits/semantic/weights": [1, 1, 256, 21],
        "logits/semantic/biases": [21],
    },
    "deeplabv3_mobilenetv2": {
        "MobilenetV2/Conv/weights": [3, 3, 3, 32],
        "MobilenetV2/expanded_conv/depthwise/depthwise_weights": [3, 3, 32, 1],
        "MobilenetV2/expanded_conv_16/project/weights": [1, 1, 960, 320],
        "concat_projection/weights": [1, 1, 512, 256],
        "logits/semantic/biases": [21],
    },
    "deeplabv3plus_resnet101_beta": {
        "resnet_v1_101/conv1_3/weights": [3, 3, 64, 128],
        "resnet_v1_101/block4/unit_3/bottleneck_v1/conv2/weights": [3, 3, 512, 512],
        "resnet_v1_101/block3/unit_23/bottleneck_v1/conv3/BatchNorm/beta": [1024],
        "resnet_v1_101/block1/unit_1/bottleneck_v1/shortcut/weights": [1, 1, 128, 256],
        "decoder/feature_projection0/weights": [1, 1, 256, 48],
    },
}

# Parameter totals of the reference (§2.2, computed from the official layer definitions).
REFERENCE_PARAMS = {
    "deeplabv3plus_xception65": 41_258_213,
    "deeplabv3_mobilenetv2": 2_146_645,
    "deeplabv3plus_resnet50_beta": 26_891_013,
    "deeplabv3plus_resnet101_beta": 45_935_365,
}


def _shape(entry):
    layer, attr = entry
    return list(getattr(layer, attr).shape)


def _weights(model):
    return [w.numpy() for w in model.weights]


@pytest.fixture(scope="module")
def mnv2_ckpt(tmp_path_factory):
    """A randomised deeplabv3_mobilenetv2 and its TF1 checkpoint (with ignored extras)."""
    model = randomize_weights(create_model("deeplabv3_mobilenetv2"), seed=3)
    prefix = tmp_path_factory.mktemp("mnv2") / "model.ckpt"
    prefix, variables = write_model_checkpoint(prefix, model)
    return model, prefix, variables


# --- Names ---


@pytest.mark.parametrize("name", sorted(SPECS))
def test_names_match_official_spec(name):
    model = create_model(name)
    names = official_variable_names(model)
    spec = SPECS[name]()
    assert len(spec) == len(set(spec))
    assert sorted(names) == sorted(spec)
    # Every model weight is named exactly once.
    assert len(names) == len(model.weights)
    assert {id(getattr(layer, attr)) for layer, attr in names.values()} == {
        id(w) for w in model.weights
    }
    for literal, shape in LITERAL.get(name, {}).items():
        assert _shape(names[literal]) == shape, literal
    # Each name points at the Keras weight of the same scope ("/" -> "_") and kind.
    net = network_scope(model)
    for ckpt_name, (layer, attr) in names.items():
        scope, var = ckpt_name.rsplit("/", 1)
        scope = scope.removeprefix(f"{net}/")
        keras_path = f"{scope.replace('/', '_')}/{KERAS_WEIGHT[var]}"
        assert getattr(layer, attr).path == keras_path, ckpt_name
        assert isinstance(layer, keras.layers.DepthwiseConv2D) == (var == "depthwise_weights")


def test_network_scopes_and_unsupported_backbones():
    assert network_scope(create_model("deeplabv3_mobilenetv2_dm05")) == "MobilenetV2"
    assert network_scope(get_backbone("xception71")) == "xception_71"
    with pytest.raises(ValueError, match="no official DeepLab TF1 checkpoint"):
        network_scope(create_model("deeplabv3plus_resnet50"))  # Caffe layout
    with pytest.raises(ValueError, match="block5_unit_1_bottleneck_v1_conv1"):
        # the cascade's extra blocks (suite time: on ResNet-50, not the registered 83M ResNet-101)
        official_variable_names(create_model("deeplabv3_resnet50_beta", head="cascade"))
    # Regular (non-separable) ASPP branches: `aspp{i}/weights` [3, 3, 2048, 256] + BN.
    names = official_variable_names(create_model("deeplabv3_resnet50_beta", aspp_separable=False))
    assert _shape(names["aspp2/weights"]) == [3, 3, 2048, 256]
    assert (
        "aspp2/BatchNorm/moving_mean" in names and "aspp2_depthwise/depthwise_weights" not in names
    )


def test_ignored_names():
    for name in (
        "global_step",
        "beta1_power",
        "xception_65/entry_flow/conv1_1/weights/Momentum",
        "logits/semantic/weights/Momentum",
        "aspp0/weights/Adam_1",
        "xception_65/logits/weights",
        "resnet_v1_101/logits/biases",
        "MobilenetV2/Logits/Conv2d_1c_1x1/weights",
        "MobilenetV2/Conv_1/BatchNorm/gamma",
    ):
        assert is_ignored_variable(name), name
    for name in (
        "logits/semantic/weights",
        "MobilenetV2/Conv/weights",
        "xception_65/entry_flow/conv1_1/weights",
        "meta_architecture/concat_projection/weights",
        "aspp0/weights/ExponentialMovingAverage",
    ):
        assert not is_ignored_variable(name), name


# --- Round trips: model A -> TF1 checkpoint -> fresh model B ---


@pytest.mark.parametrize(
    "name",
    [
        "deeplabv3_mobilenetv2",
        "deeplabv3plus_resnet50_beta",
        # suite time: 19 s and 12 s; the Xception names are checked in test_names_match_official_spec
        pytest.param("deeplabv3plus_xception65", marks=pytest.mark.slow),
        pytest.param("deeplabv3plus_resnet101_beta", marks=pytest.mark.slow),
    ],
)
def test_round_trip_bitwise(name, tmp_path):
    a = randomize_weights(create_model(name), seed=1)
    prefix, variables = write_model_checkpoint(tmp_path / "model.ckpt", a)
    assert sum(v.size for v in variables.values()) == REFERENCE_PARAMS[name]
    stored = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert "global_step" in stored and any(n.endswith("/Momentum") for n in stored)
    assert len(stored) > len(variables)  # the ignored extras are really in the file

    assert inspect_tf_checkpoint(prefix)["suggested_models"] == [name]

    b = create_model(name)
    assert not any(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    assert load_tf_checkpoint(prefix, b) is b
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert wa.path == wb.path
        np.testing.assert_array_equal(wb.numpy(), wa.numpy(), err_msg=wa.path)
    x = random_images(1, 65)
    np.testing.assert_array_equal(b(x).numpy(), a(x).numpy())


def test_backbone_only_imagenet_checkpoint(tmp_path):
    a = randomize_weights(create_model("deeplabv3plus_resnet50_beta"), seed=2)
    prefix, variables = write_model_checkpoint(tmp_path / "model.ckpt", a, backbone_only=True)
    assert variables and all(n.startswith("resnet_v1_50/") for n in variables)
    assert (
        "resnet_v1_50/logits/weights"
        in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    )

    b = create_model("deeplabv3plus_resnet50_beta")
    before = {w.path: w.numpy() for w in b.weights}
    with pytest.raises(ValueError) as err:
        load_tf_checkpoint(prefix, b)
    msg = str(err.value)
    assert "model weights missing from the checkpoint [72]" in msg
    assert "aspp0/weights [1, 1, 2048, 256]" in msg
    assert "... and 42 more" in msg  # 30 listed
    assert "backbone_only=True" in msg
    assert all(np.array_equal(w.numpy(), before[w.path]) for w in b.weights)

    load_tf_checkpoint(prefix, b, backbone_only=True)
    backbone_a = a.get_layer("resnet50_beta_backbone")
    backbone_b = b.get_layer("resnet50_beta_backbone")
    for wa, wb in zip(backbone_a.weights, backbone_b.weights, strict=True):
        np.testing.assert_array_equal(wb.numpy(), wa.numpy())
    backbone_ids = {id(w) for w in backbone_b.weights}
    head = [w for w in b.weights if id(w) not in backbone_ids]
    assert len(head) == 72
    assert all(np.array_equal(w.numpy(), before[w.path]) for w in head)  # untouched

    # A bare backbone model loads the same checkpoint without backbone_only.
    bare = get_backbone("resnet50_beta")
    load_tf_checkpoint(prefix, bare)
    for wa, wb in zip(backbone_a.weights, bare.weights, strict=True):
        np.testing.assert_array_equal(wb.numpy(), wa.numpy())
    assert inspect_tf_checkpoint(prefix)["backbone_only"] is True


def test_backbone_only_from_segmentation_checkpoint(mnv2_ckpt):
    a, prefix, _ = mnv2_ckpt
    b = create_model("deeplabv3plus_mobilenetv2", num_classes=151)  # other head entirely
    load_tf_checkpoint(prefix, b, backbone_only=True)
    for wa, wb in zip(
        a.get_layer("mobilenetv2_backbone").weights,
        b.get_layer("mobilenetv2_backbone").weights,
        strict=True,
    ):
        np.testing.assert_array_equal(wb.numpy(), wa.numpy())


# --- Errors ---


def test_missing_extra_and_misshaped_reported_together(mnv2_ckpt, tmp_path):
    _, _, variables = mnv2_ckpt
    broken = dict(variables)
    del broken["aspp0/BatchNorm/beta"]
    broken["aspp9/weights"] = np.zeros((1, 1, 320, 256), np.float32)
    broken["concat_projection/weights"] = np.zeros((1, 1, 1280, 256), np.float32)
    broken["global_step"] = np.int64(7)
    prefix = write_tf1_checkpoint(tmp_path / "broken.ckpt", broken)

    b = create_model("deeplabv3_mobilenetv2")
    before = _weights(b)
    with pytest.raises(ValueError) as err:
        load_tf_checkpoint(prefix, b)
    msg = str(err.value)
    assert msg.startswith(f"Checkpoint {prefix} does not match model 'deeplabv3_mobilenetv2'")
    assert "3 problem(s); nothing was loaded" in msg
    assert (
        "concat_projection/weights: checkpoint [1, 1, 1280, 256] float32 vs model "
        "[1, 1, 512, 256] float32" in msg
    )
    assert "model weights missing from the checkpoint [1]:\n  aspp0/BatchNorm/beta [256]" in msg
    assert (
        "checkpoint variables the model does not use [1]:\n  aspp9/weights [1, 1, 320, 256]" in msg
    )
    assert "global_step" not in msg
    assert "--model NAME --num-classes N" in msg
    for x, y in zip(before, _weights(b), strict=True):  # nothing assigned
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "name, classes", [("deeplabv3_mobilenetv2", 19), ("deeplabv3plus_mobilenetv2", 151)]
)
def test_num_classes(name, classes, tmp_path):
    a = randomize_weights(create_model(name, num_classes=classes), seed=4)
    prefix, _ = write_model_checkpoint(tmp_path / "model.ckpt", a)
    info = inspect_tf_checkpoint(prefix)
    assert info["num_classes"] == classes and info["network"] == "MobilenetV2"
    assert name in info["suggested_models"]

    b = load_tf_checkpoint(prefix, create_model(name, num_classes=classes))
    np.testing.assert_array_equal(b(random_images()).numpy(), a(random_images()).numpy())

    with pytest.raises(ValueError) as err:
        load_tf_checkpoint(prefix, create_model(name))  # 21 classes
    msg = str(err.value)
    assert "2 problem(s)" in msg
    assert f"logits/semantic/weights: checkpoint [1, 1, 256, {classes}] float32" in msg
    assert f"logits/semantic/biases: checkpoint [{classes}] float32 vs model [21]" in msg
    assert f"pass --num-classes {classes} (num_classes={classes})" in msg


def test_wrong_architecture_hints(mnv2_ckpt):
    _, prefix, _ = mnv2_ckpt
    with pytest.raises(ValueError) as err:
        load_tf_checkpoint(prefix, create_model("deeplabv3plus_resnet50_beta"))
    msg = str(err.value)
    assert "this checkpoint fits --model deeplabv3_mobilenetv2 --num-classes 21." in msg
    assert "holds network MobilenetV2 but the model's backbone is resnet_v1_50" in msg
    assert "mobilenetv2 or mobilenetv2_dm05" in msg
    assert "has no decoder: use a DeepLabV3 model" in msg
    assert "... and " in msg  # long lists are cut
    assert len(msg.splitlines()) < 150

    with pytest.raises(ValueError, match="depth multiplier differs: use mobilenetv2\\."):
        load_tf_checkpoint(prefix, create_model("deeplabv3_mobilenetv2_dm05"))


def test_checkpoint_paths(mnv2_ckpt, tmp_path):
    a, prefix, _ = mnv2_ckpt
    for path in (prefix + ".index", prefix + ".data-00000-of-00001"):
        b = load_tf_checkpoint(path, create_model("deeplabv3_mobilenetv2"))
        np.testing.assert_array_equal(b.weights[0].numpy(), a.weights[0].numpy())
    b = load_tf_checkpoint(Path(prefix).parent, create_model("deeplabv3_mobilenetv2"))
    np.testing.assert_array_equal(b.weights[-1].numpy(), a.weights[-1].numpy())
    missing = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(ValueError, match=f"No TF1 checkpoint at {missing}.*model.ckpt.index"):
        load_tf_checkpoint(missing, create_model("deeplabv3_mobilenetv2"))
    # Index without its data file: matched by shapes, then a clear error, nothing assigned.
    shutil.copy(prefix + ".index", tmp_path / "nodata.ckpt.index")
    b = create_model("deeplabv3_mobilenetv2")
    before = _weights(b)
    with pytest.raises(ValueError, match="Cannot read the values of checkpoint .*nodata.ckpt"):
        load_tf_checkpoint(tmp_path / "nodata.ckpt", b)
    for x, y in zip(before, _weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    garbage = tmp_path / "garbage.ckpt"
    (tmp_path / "garbage.ckpt.index").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read the TF checkpoint .*garbage.ckpt"):
        load_tf_checkpoint(garbage, create_model("deeplabv3_mobilenetv2"))


# --- CLI-ready conversion ---


def test_convert_tf_checkpoint(mnv2_ckpt, tmp_path):
    a, prefix, _ = mnv2_ckpt
    out = tmp_path / "out" / "mnv2.weights.h5"
    model = convert_tf_checkpoint(prefix, "deeplabv3_mobilenetv2", 21, out)
    assert out.is_file() and model.name == "deeplabv3_mobilenetv2"
    fresh = create_model("deeplabv3_mobilenetv2")
    fresh.load_weights(out)
    for wa, wb in zip(a.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(wb.numpy(), wa.numpy())
    with pytest.raises(ValueError, match="must end in '.weights.h5'"):
        convert_tf_checkpoint(prefix, "deeplabv3_mobilenetv2", 21, tmp_path / "w.h5")
    with pytest.raises(ValueError, match="--num-classes 21"):
        convert_tf_checkpoint(prefix, "deeplabv3_mobilenetv2", 19, tmp_path / "x.weights.h5")
    assert not (tmp_path / "x.weights.h5").exists()


def test_inspect_tf_checkpoint(mnv2_ckpt):
    _, prefix, variables = mnv2_ckpt
    info = inspect_tf_checkpoint(prefix)
    assert info["network"] == "MobilenetV2" and info["backbones"] == ["mobilenetv2"]
    assert info["num_classes"] == 21
    assert info["aspp"] == "none" and info["image_pooling"] and not info["decoder"]
    assert info["backbone_only"] is False
    assert info["suggested_models"] == ["deeplabv3_mobilenetv2"]
    assert info["num_variables"] == len(variables) == 272
    assert set(model_variables(create_model("deeplabv3_mobilenetv2"))) == set(variables)
