"""Zero-initialised residual branches (`model.zero_init_residual`): which BatchNorms, and the
blocks then start as the identity."""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_deeplab import _compat, create_model
from keras_deeplab.training import ConfigError, load_config
from keras_deeplab.training.residual_init import residual_branch_ends, zero_init_residual
from keras_deeplab.training.run import model_builder

# MobileNetV2's blocks with a residual add (stride 1, as many channels out as in)
DEMO = Path(__file__).parents[1] / "configs" / "shapes_demo.yaml"
MOBILENET_RESIDUAL_BLOCKS = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)


def _mobilenet():
    return create_model(
        "deeplabv3plus_mobilenetv2",
        num_classes=3,
        backbone="mobilenetv2_dm05",
        input_shape=(33, 33, 3),
    )


def _gammas(model):
    return {
        layer.name: np.asarray(layer.gamma)
        for layer in _compat.all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def test_mobilenet_zeroes_exactly_the_projections_of_residual_blocks():
    model = _mobilenet()
    before = _gammas(model)
    names = zero_init_residual(model)
    expected = {f"expanded_conv_{i}_project_BatchNorm" for i in MOBILENET_RESIDUAL_BLOCKS}
    assert sorted(names) == sorted(expected)
    after = _gammas(model)
    for name, gamma in after.items():
        if name in expected:
            assert not gamma.any(), name
        else:
            np.testing.assert_array_equal(gamma, before[name], err_msg=name)


def test_each_residual_block_then_passes_its_input_through():
    model = _mobilenet()
    zero_init_residual(model)
    backbone = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.get_layer("Conv")
    )
    pairs = []
    for i in MOBILENET_RESIDUAL_BLOCKS:
        add = backbone.get_layer(f"expanded_conv_{i}_add")
        branch, shortcut = add.input
        assert branch is backbone.get_layer(f"expanded_conv_{i}_project_BatchNorm").output
        pairs += [add.output, shortcut]
    probe = keras.Model(backbone.input, pairs)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 33, 33, 3)).astype("float32")
    outputs = probe(images, training=False)
    for k, i in enumerate(MOBILENET_RESIDUAL_BLOCKS):
        out, block_input = outputs[2 * k], outputs[2 * k + 1]
        np.testing.assert_allclose(out, block_input, atol=1e-6, err_msg=f"block {i}")
        assert np.abs(np.asarray(block_input)).max() > 0


def test_resnet_zeroes_the_third_bn_of_each_unit_not_the_projection_shortcut():
    model = create_model("deeplabv3plus_resnet50", num_classes=3, input_shape=(65, 65, 3))
    names = sorted(layer.name for layer in residual_branch_ends(model))
    units = {2: 3, 3: 4, 4: 6, 5: 3}  # ResNet-50's units per block
    assert names == sorted(
        f"conv{block}_block{unit}_3_bn" for block, n in units.items() for unit in range(1, n + 1)
    )


def test_a_model_without_residual_blocks_is_a_clear_error():
    model = create_model("fcn32s", num_classes=3, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="no residual block.*remove model.zero_init_residual"):
        zero_init_residual(model)


def test_config_builds_the_zeroed_model_and_refuses_it_with_loaded_weights():
    config = load_config(
        DEMO,
        [
            "model.zero_init_residual=true",
            "model.num_classes=3",
            "model.options.input_shape=[33,33,3]",
        ],
    )
    gammas = _gammas(model_builder(config.model)())
    assert not gammas["expanded_conv_2_project_BatchNorm"].any()
    assert gammas["expanded_conv_1_project_BatchNorm"].all()
    with pytest.raises(
        ConfigError, match="model.zero_init_residual: zeroes weights that model.backbone_weights"
    ):
        load_config(DEMO, ["model.zero_init_residual=true", "model.backbone_weights=imagenet"])


def test_the_recipe_setting_yields_to_weights_given_as_overrides():
    assert load_config(DEMO).model.zero_init_residual  # the demo recipe sets it
    with pytest.warns(
        UserWarning, match=r"zero_init_residual \(the recipe's\) turned off: model.weights"
    ):
        config = load_config(DEMO, ["model.weights=runs/voc.weights.h5"])
    assert not config.model.zero_init_residual
