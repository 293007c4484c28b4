"""Training configs: recipes load and validate, errors list every problem, overrides are typed."""

import json
from pathlib import Path

import pytest

from keras_deeplab.training import ConfigError, TrainConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_recipe_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {
        "voc_deeplabv3plus_xception65.yaml",
        "cityscapes_deeplabv3plus_xception65.yaml",
        "ade20k_deeplabv3plus_xception65.yaml",
        "voc_deeplabv2_resnet101_msc.yaml",
        "shapes_demo.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    assert config.train.steps > 0 and config.train.batch_size > 0


def test_official_recipe_values():
    voc = load_config(CONFIGS[0].parent / "voc_deeplabv3plus_xception65.yaml")
    assert (voc.model.name, voc.model.output_stride, voc.data.crop_size) == (
        "deeplabv3plus_xception65",
        16,
        [513, 513],
    )
    assert (voc.optimizer.learning_rate, voc.train.steps, voc.train.batch_size) == (
        0.007,
        30000,
        16,
    )
    assert voc.optimizer.weight_decay == 4e-5 and voc.train.fine_tune_batch_norm
    city = load_config(CONFIGS[0].parent / "cityscapes_deeplabv3plus_xception65.yaml")
    assert (city.data.crop_size, city.train.steps, city.model.num_classes) == (
        [769, 769],
        90000,
        19,
    )
    v2 = load_config(CONFIGS[0].parent / "voc_deeplabv2_resnet101_msc.yaml")
    assert v2.model.name == "deeplabv2_resnet101_aspp_l_msc" and v2.data.crop_size == [321, 321]
    assert (v2.optimizer.learning_rate, v2.train.steps, v2.train.batch_size) == (2.5e-4, 20000, 10)
    assert not v2.train.fine_tune_batch_norm and v2.optimizer.batch_norm_multiplier == 0
    assert (v2.optimizer.last_layer_multiplier, v2.optimizer.bias_multiplier) == (10.0, 2.0)


def test_defaults_are_official():
    config = load_config()
    assert config.optimizer.momentum == 0.9 and config.schedule.power == 0.9
    assert config.schedule.policy == "poly" and config.data.crop_size == 513
    assert (config.data.min_scale, config.data.max_scale, config.data.scale_step) == (
        0.5,
        2.0,
        0.25,
    )


def test_overrides_are_typed():
    config = load_config(
        CONFIGS[0].parent / "shapes_demo.yaml",
        [
            "optimizer.learning_rate=1e-3",
            "train.steps=100",
            "train.fine_tune_batch_norm=false",
            "data.crop_size=33,65",
            "model.num_classes=null",
            "model.options={backbone: mobilenetv2}",
            "loss.class_weights=[1, 2, 3, 4, 5]",
            "checkpoint.dir=runs/123",
        ],
    )
    assert config.optimizer.learning_rate == 1e-3 and isinstance(
        config.optimizer.learning_rate, float
    )
    assert config.train.steps == 100 and config.train.fine_tune_batch_norm is False
    assert config.data.crop_size == [33, 65] and config.model.num_classes is None
    assert config.model.options == {"backbone": "mobilenetv2"}
    assert config.loss.class_weights == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert config.checkpoint.dir == "runs/123"


def test_one_error_lists_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model:\n  nam: deeplabv3plus_xception65\n  num_classes: '21'\n"
        "optimizer:\n  learning_rate: fast\n  last_layers: [1]\n"
        "train:\n  steps: 1.5\n  strategy: tpu\n"
        "bogus: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(
            path,
            ["loss.top_k_percent_pixels=2", "schedule.power=high", "train.batch_norm_momentum=1"],
        )
    message = str(info.value)
    assert str(path) in message and "(10 problems)" in message
    for expected in (
        "model.nam: unknown key (did you mean 'name'?)",
        "model.num_classes: expected int or null, got str '21'",
        "optimizer.learning_rate: expected float, got str 'fast'",
        "optimizer.last_layers[0]: expected str, got int 1",
        "train.steps: expected int, got float 1.5",
        "train.strategy: expected one of 'auto', 'default', 'mirrored', 'multi_worker'",
        "bogus: unknown key; valid keys: model, data, loss, optimizer, schedule, train, checkpoint",
        "loss.top_k_percent_pixels: must be in (0, 1], got 2.0",
        "schedule.power: expected float, got str 'high'",
        "train.batch_norm_momentum: must be in [0, 1), got 1.0",
    ):
        assert expected in message, expected


def test_unknown_model_and_missing_root():
    with pytest.raises(ConfigError) as info:
        load_config(
            {"model": {"name": "deeplabv3plus_xceptoin65"}, "data": {"source": "directory"}}
        )
    message = str(info.value)
    assert "did you mean 'deeplabv3plus_xception65'" in message
    assert "data.root: required when data.source is 'directory'" in message


def test_json_and_bad_files(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"train": {"steps": 7}, "optimizer": {"learning_rate": 0.01}}))
    assert load_config(good).train.steps == 7
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["train.steps"])


def test_round_trip_through_yaml(tmp_path):
    config = load_config(CONFIGS[0].parent / "voc_deeplabv2_resnet101_msc.yaml")
    path = tmp_path / "saved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_eval_options_override_options_for_the_eval_split():
    from keras_deeplab.training.run import load_source

    config = load_config(
        {"data": {"source": "shapes", "options": {"num_examples": 12, "image_size": 32}}},
        ["data.eval_options.num_examples=5"],
    )
    assert config.data.eval_options == {"num_examples": 5}
    train = load_source(config.data, "train")
    val = load_source(config.data, "val", evaluation=True)
    assert (train.num_examples, val.num_examples) == (12, 5)
    image, _ = next(iter(val.dataset))
    assert image.shape[:2] == (32, 32)  # options still apply to the eval split
