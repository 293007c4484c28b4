"""Training configs: recipes load and validate, errors list every problem, overrides are typed."""

import dataclasses
import json
import re
import shlex
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


# ---------------------------------------------------------------- folder data on top of a recipe

ROOT = Path(__file__).parents[1]
FOLDERS_DOC = ROOT / "docs" / "training_on_folders.md"


def _doc_train_command():
    """`(recipe, overrides)` of the `keras-deeplab train` command of docs/training_on_folders.md."""
    blocks = re.findall(r"^```bash\n(.*?)^```", FOLDERS_DOC.read_text(), re.M | re.S)
    commands = [
        shlex.split(line)
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("keras-deeplab train ")
    ]
    assert len(commands) == 1, commands
    words = commands[0]
    recipe = words[words.index("--config") + 1]
    return recipe, [w for w in words[2:] if "=" in w and not w.startswith("-")]


def test_the_documented_folder_command_builds_its_config_and_loads_camvid(monkeypatch, tmp_path):
    import warnings

    import keras_deeplab
    from keras_deeplab.configs import recipe_path
    from keras_deeplab.training.config import check_labels
    from keras_deeplab.training.run import load_source, model_builder
    from tests.official_tflite import shared_data_dir

    recipe, overrides = _doc_train_command()
    assert recipe == "shapes_demo" and "data.source=directory" in overrides
    assert "data.root=../shared/data/camvid_full" in overrides
    shared = shared_data_dir()  # fails under CI=true when the data is missing
    monkeypatch.chdir(ROOT)  # the doc's paths are relative to the repository root
    assert (ROOT / "../shared/data/camvid_full").resolve() == (shared / "camvid_full").resolve()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(recipe_path(recipe), overrides)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 3 and "data.options.image_size" in messages[0], messages
    assert "data.eval_options.num_examples" in messages[0] and "dropped" in messages[0]
    assert "model.options.aspp_filters, model.options.decoder_filters" in messages[1]
    assert "dropped" in messages[1]
    assert "model.zero_init_residual (the recipe's) turned off: model.weights loads" in messages[2]
    assert not config.model.zero_init_residual and not config.data.rotate90
    assert config.data.options == {} and config.data.eval_options == {}
    assert config.model.name == "deeplabv3_mobilenetv2_dm05_os8"
    assert config.model.num_classes is None and config.loss.ignore_label is None
    # The training split (structure only: quick) and the val split (fully scanned).
    unscanned = dataclasses.replace(config.data, options={"validate": False})
    train = load_source(unscanned, config.data.split)
    val = load_source(config.data, config.data.eval_split, evaluation=True)
    assert (train.num_examples, val.num_examples) == (367, 101)
    for source in (train, val):
        assert source.num_classes == 11 and source.class_names[0] == "sky"
        assert source.label_lut[11] == 255 and source.ignore_label == 255
        check_labels(config.loss, source, config.model.num_classes)
    # The model it builds takes the VOC weights of Google's architecture (the doc's
    # converted file), with the recipe's training-only classifiers starting fresh.
    voc = tmp_path / "voc_mnv2_dm05_os8.weights.h5"
    keras_deeplab.create_model(config.model.name).save_weights(voc)
    model_config = dataclasses.replace(config.model, weights=str(voc), num_classes=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = model_builder(model_config)()
    messages = " ".join(str(w.message) for w in caught)
    assert "training-only auxiliary" in messages and "21 classes, the model 11" in messages
    assert model.get_layer("concat_projection").filters == 256


def test_recipe_options_of_another_source_are_dropped_but_overrides_are_not(tmp_path):
    import warnings

    recipe = ROOT / "configs" / "shapes_demo.yaml"
    switch = ["data.source=directory", f"data.root={tmp_path}"]
    with pytest.warns(UserWarning, match=r"data.options.image_size, data.options.num_examples"):
        config = load_config(recipe, [*switch, "data.options.num_classes=3"])
    assert config.data.options == {"num_classes": 3}
    # An option given on the command line is the user's: never dropped, one clear error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError) as error:
            load_config(recipe, [*switch, "data.options={image_size: 64}"])
    message = str(error.value)
    assert "data.options: image_size not taken by data.source='directory'" in message
    assert "label_map" in message and "data.options={}" in message
    # Clearing them explicitly works without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(recipe, [*switch, "data.options={}", "data.eval_options={}"])
    assert config.data.options == config.data.eval_options == {}


def test_recipe_model_options_another_model_does_not_take_are_dropped_but_overrides_are_not():
    import warnings

    recipe = ROOT / "configs" / "shapes_demo.yaml"
    assert "decoder_filters" in load_config(recipe).model.options  # a DeepLabV3+ option
    switch = ["model.name=deeplabv3_mobilenetv2_dm05_os8"]
    with pytest.warns(
        UserWarning,
        match=r"model.options.aspp_filters, model.options.decoder_filters \(options of the recipe's",
    ):
        config = load_config(recipe, switch)
    # v3+ widths: Google's v3 weights then load into the switched model
    assert not {"decoder_filters", "aspp_filters"} & set(config.model.options)
    assert config.model.options["backbone"] == "mobilenetv2_dm05"  # taken by both: kept
    # Given on the command line, the option is the user's: never dropped, one clear error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="unknown argument 'decoder_filters'"):
            load_config(recipe, [*switch, "model.options.decoder_filters=64"])
        same = load_config(recipe, ["model.name=deeplabv3plus_mobilenetv2"])  # the recipe's
    assert "decoder_filters" in same.model.options


def test_unknown_data_options_fail_when_the_config_loads(tmp_path):
    missing = tmp_path / "not_made_yet"  # nothing is read: the check needs no data
    raw = {"data": {"source": "directory", "root": str(missing), "options": {"mask_treshold": 1}}}
    with pytest.raises(ConfigError, match=r"mask_treshold.*did you mean 'mask_treshold' -> "):
        load_config(raw)
    with pytest.raises(ConfigError, match=r"data.eval_options: label_map not taken by .*'shapes'"):
        load_config({"data": {"eval_options": {"label_map": {1: 0}}}})
    ok = load_config({"data": {"options": {"image_size": 32, "skip_bad": True}}})
    assert ok.data.options == {"image_size": 32, "skip_bad": True}


def test_check_labels_names_the_mismatch_and_the_fix():
    from keras_deeplab.data import from_directory
    from keras_deeplab.training import LossConfig
    from keras_deeplab.training.config import check_labels
    from tests.official_tflite import shared_data_dir

    camvid = from_directory(shared_data_dir() / "camvid_segnet", "train")  # listed, not scanned
    check_labels(LossConfig(), camvid)
    check_labels(LossConfig(ignore_label=255, class_weights=[1.0] * 11), camvid, 11)
    with pytest.raises(ConfigError) as error:
        check_labels(LossConfig(ignore_label=11), camvid)
    message = str(error.value)
    assert (
        "loss.ignore_label=11 but camvid_segnet:train marks the pixels to ignore with 255"
        in message
    )
    assert "data.options.ignore_label=11" in message and "loss.ignore_label=255" in message
    with pytest.raises(ConfigError, match=r"its class 3 would be ignored"):
        check_labels(LossConfig(ignore_label=3), camvid)
    with pytest.raises(ConfigError) as error:
        check_labels(LossConfig(class_weights=[1.0] * 5), camvid, 21)
    message = str(error.value)
    assert "model.num_classes=21 but camvid_segnet:train has 11 classes" in message
    assert "loss.class_weights has 5 entries but the model predicts 21" in message
    # The suggested fix works.
    relabelled = from_directory(shared_data_dir() / "camvid_segnet", "train", ignore_label=11)
    check_labels(LossConfig(ignore_label=11), relabelled)
