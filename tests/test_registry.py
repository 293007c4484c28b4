"""Every registered model as a `SegmentationModel`, the registries, and bad model configs.

As timm tests every registered model: each one is built at a small size and checked for
its output shape, a `.keras` round trip without custom objects (same class, equal
`get_config()`, equal outputs) and its properties.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_deeplab
from keras_deeplab import SegmentationModel, create_model, list_models
from keras_deeplab.backbones import preprocessing_mode
from keras_deeplab.models import model_architecture
from keras_deeplab.optimize import optimize_for_inference
from keras_deeplab.registry import ARCHITECTURES, Architecture, Head, get_architecture

# The registered names before the registry existed (issue 14 keeps every one).
NAMES = [
    "deeplabv1_vgg16_largefov",
    "deeplabv2_resnet101_aspp_l",
    "deeplabv2_resnet101_aspp_l_msc",
    "deeplabv2_resnet101_aspp_s",
    "deeplabv2_resnet50_aspp_l",
    "deeplabv2_vgg16_aspp_l",
    "deeplabv2_vgg16_aspp_s",
    "deeplabv3_mobilenetv2",
    "deeplabv3_mobilenetv2_dm05",
    "deeplabv3_mobilenetv2_dm05_os8",
    "deeplabv3_mobilenetv2_os8",
    "deeplabv3_resnet101_beta",
    "deeplabv3_resnet101_beta_cascade",
    "deeplabv3_resnet50_beta",
    "deeplabv3_xception65",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_resnet101_beta",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet50_beta",
    "deeplabv3plus_xception41",
    "deeplabv3plus_xception65",
    "deeplabv3plus_xception71",
    "segnet",
    "segnet_basic",
    "refinenet_resnet101",
    "refinenet_resnet50",
    "upernet_lite_resnet50",
    "upernet_resnet101",
    "upernet_resnet50",
    "upernet_resnet50_mmseg",
    "parsenet_mobilenetv2",
    "parsenet_vgg16_largefov",
    "context_mobilenetv2",
    "dilation8_camvid",
    "dilation8_voc",
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "fcn8s_atonce",
    "fcn_resnet50",
    "fcn_resnet101",
    "pspnet50",
    "pspnet101",
    "pspnet_mobilenetv2",
    "unet",
    "unet_same",
]
SIZE = (33, 41)
NUM_CLASSES = 3
# Models that cannot take the default 33x41 RGB input: name -> (input HWC, output HW).
INPUTS = {"unet": ((188, 188, 1), (4, 4))}
# Above this many parameters the rebuild from config and the .keras file round trip (hundreds
# of MB) run under -m slow; the default suite builds those models once.
ROUND_TRIP_MAX_PARAMS = 30_000_000


def _family(name):
    """(architecture, backbone family): the code a model's config round trip exercises.
    Variants of one family differ only in depth, width or stride (xception41/65/71,
    mobilenetv2 x0.5 / x1 / OS 8, resnet50 / 101, ASPP-S / L)."""
    architecture, config = model_architecture(name)
    backbone = config.get("backbone", get_architecture(architecture).default_backbone) or ""
    return architecture, re.sub(r"\d+", "", backbone.split("_dm")[0])


# The default run round-trips one model of each family through a .keras file (the first
# name, a ResNet-50 before a ResNet-101); every other model under -m slow (suite time).
ROUND_TRIPPED = {
    min((n for n in NAMES if _family(n) == family), key=lambda n: ("101" in n, n))
    for family in {_family(n) for n in NAMES}
}


def _image(seed=0, size=SIZE, channels=3):
    return np.random.default_rng(seed).uniform(0, 255, (1, *size, channels)).astype("float32")


def _properties(model):
    return {
        key: getattr(model, key)
        for key in (
            "architecture",
            "backbone_name",
            "output_stride",
            "num_classes",
            "activation",
            "preprocessing",
            "feature_info",
        )
    }


def test_every_name_is_still_registered():
    assert list_models() == sorted(NAMES)


def _built(name):
    (height, width, channels), out_size = INPUTS.get(name, ((*SIZE, 3), SIZE))
    options = {"input_shape": (None, None, channels)} if channels != 3 else {}
    model = create_model(name, num_classes=NUM_CLASSES, **options)
    x = _image(size=(height, width), channels=channels)
    return model, x, out_size


# The seeds' models over 30M parameters: each is built (counts, shapes, properties) by its
# own test file, so the registry check of these runs under -m slow (suite time).
LARGE_SEED_MODELS = {
    name
    for name in NAMES
    if name.startswith(("fcn", "dilation8", "pspnet", "refinenet", "upernet", "unet"))
    and name != "pspnet_mobilenetv2"
}
# DeepLab models over 30M parameters that another default test builds in full (official names,
# parameter counts, weight loading: tests/test_weights_checkpoint.py, test_models.py,
# test_weights_loading.py) and whose smaller sibling of the same architecture and backbone
# family runs here by default (suite time: 36 s together).
LARGE_MODELS_BUILT_ELSEWHERE = {
    "deeplabv2_resnet101_aspp_l",  # sibling deeplabv2_resnet50_aspp_l
    "deeplabv3_resnet101_beta",  # deeplabv3_resnet50_beta
    "deeplabv3_resnet101_beta_cascade",  # deeplabv3_resnet50_beta (the cascade: test_models.py)
    "deeplabv3plus_resnet101_beta",  # deeplabv3plus_resnet50_beta
    "deeplabv3plus_xception65",  # deeplabv3plus_xception41
    "deeplabv3plus_xception71",  # deeplabv3plus_xception41
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow)
        if n in LARGE_SEED_MODELS | LARGE_MODELS_BUILT_ELSEWHERE
        else n
        for n in sorted(NAMES)
    ],
)
def test_every_registered_model(name, tmp_path):
    architecture, config = model_architecture(name)
    arch = get_architecture(architecture)
    model, x, out_size = _built(name)
    assert isinstance(model, SegmentationModel)
    y = np.asarray(model(x))
    assert y.shape == (1, *out_size, NUM_CLASSES)

    backbone = config.get("backbone", arch.default_backbone)
    stride = config.get("output_stride", arch.default_output_stride)
    expected = {
        "architecture": architecture,
        "backbone_name": backbone,
        "output_stride": stride,
        "num_classes": NUM_CLASSES,
        "activation": None,
        "preprocessing": preprocessing_mode(backbone) if backbone else arch.preprocessing,
    }
    assert {k: v for k, v in _properties(model).items() if k in expected} == expected
    info = model.feature_info
    if backbone is None:
        assert info is None
    else:
        assert info[-1] == {"name": "final", "stride": stride, "channels": info[-1]["channels"]}
        assert [i["stride"] for i in info] == sorted(i["stride"] for i in info)
    assert model.name == name and model.get_config()["name"] == name

    if name not in ROUND_TRIPPED or model.count_params() > ROUND_TRIP_MAX_PARAMS:
        keras.backend.clear_session()
        return  # rebuilt and round-tripped in test_other_models_round_trip_through_keras_files
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects; rebuilt by from_config
    assert type(reloaded) is type(model)
    assert reloaded.get_config() == model.get_config()
    assert reloaded.count_params() == model.count_params()
    assert _properties(reloaded) == _properties(model)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), y)
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
def test_other_models_round_trip_through_keras_files(name, tmp_path):
    """The .keras round trip of the models the default run only builds and calls."""
    model, x, _ = _built(name)
    if name in ROUND_TRIPPED and model.count_params() <= ROUND_TRIP_MAX_PARAMS:
        pytest.skip("round-tripped in the default run")
    rebuilt = type(model).from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.count_params() == model.count_params()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))
    keras.backend.clear_session()


def test_list_models_filters_by_architecture():
    v3plus = list_models(architecture="deeplabv3plus")
    assert v3plus == [n for n in NAMES if n.startswith("deeplabv3plus_")]
    assert set(list_models(architecture="deeplabv2")) == {
        n for n in NAMES if n.startswith("deeplabv2_")
    }
    assert keras_deeplab.list_architectures() == sorted(ARCHITECTURES)
    with pytest.raises(ValueError, match=r"Unknown architecture 'deeplabv3pls'.*'deeplabv3plus'"):
        list_models(architecture="deeplabv3pls")


def test_builders_take_the_architecture_defaults():
    """The public builders' defaults are the registry's (one source of truth each)."""
    import inspect

    from keras_deeplab.models import BUILDERS

    for architecture, builder in BUILDERS.items():
        defaults = {
            key: p.default
            for key, p in inspect.signature(builder).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        for key, value in get_architecture(architecture).arguments().items():
            assert defaults[key] == value, (architecture, key)


def test_unknown_argument_lists_the_accepted_ones():
    with pytest.raises(ValueError) as info:
        create_model("deeplabv3_mobilenetv2", bogus=1, atrous_rate=(6, 12, 18))
    message = str(info.value)
    assert "create_model('deeplabv3_mobilenetv2'): unknown arguments 'bogus', 'atrous_rate'" in (
        message
    )
    assert "'atrous_rate' -> 'atrous_rates'" in message
    assert "accepted: backbone, num_classes, input_shape, output_stride" in message
    assert "weights, backbone_weights, name" in message
    with pytest.raises(
        ValueError, match=r"Unknown model 'x'.*Registered models: context_mobilenetv2, deeplabv1_"
    ):
        create_model("x", bogus=1)
    with pytest.raises(ValueError, match="unknown argument 'multi_scale'"):
        create_model("deeplabv3_mobilenetv2", multi_scale=True)  # MSC is a v2 option
    with pytest.raises(ValueError, match="unknown argument 'decoder_filters'"):
        keras_deeplab.SegmentationModel("deeplabv3", decoder_filters=128)


def test_unknown_backbone_or_head_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet51'.*Valid backbones: "):
        create_model("deeplabv3plus_resnet50", backbone="resnet51")
    with pytest.raises(ValueError, match="head must be 'aspp' or 'cascade'; got 'asp'"):
        create_model("deeplabv3_resnet50_beta", head="asp")


def test_msc_model_properties_and_round_trip(tmp_path):
    model = keras_deeplab.DeepLabV2(
        backbone="mobilenetv2_dm05", num_classes=2, multi_scale=True, activation="softmax"
    )
    assert isinstance(model, keras_deeplab.MultiScaleInputs)
    assert isinstance(model, SegmentationModel)
    assert (model.architecture, model.output_stride, model.activation) == (
        "deeplabv2",
        8,
        "softmax",
    )
    assert model.model.activation is None and model.scales == (1.0, 0.75, 0.5)
    model.save(tmp_path / "msc.keras")
    reloaded = keras.models.load_model(tmp_path / "msc.keras")
    assert type(reloaded) is keras_deeplab.MultiScaleInputs
    assert reloaded.get_config() == model.get_config()
    assert _properties(reloaded) == _properties(model)
    np.testing.assert_array_equal(np.asarray(reloaded(_image())), np.asarray(model(_image())))


def test_clone_model_and_clone():
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=NUM_CLASSES)
    cloned = keras.models.clone_model(model)  # new layers, fresh weights, same class
    assert type(cloned) is SegmentationModel and _properties(cloned) == _properties(model)
    assert cloned.get_config() == model.get_config()
    cloned.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(cloned(_image())), np.asarray(model(_image())))
    optimized = keras.models.clone_model(optimize_for_inference(model))
    assert optimized.get_config()["inference"]["fold"] is True
    assert _properties(optimized) == _properties(model)
    with pytest.raises(ValueError, match="keras.Model\\(inputs, outputs\\)"):
        image = keras.Input((None, None, 3))
        SegmentationModel(image, keras.layers.Conv2D(2, 1)(image))
    same = model.clone(copy_weights=True)
    assert type(same) is SegmentationModel and _properties(same) == _properties(model)
    assert same.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(same(_image())), np.asarray(model(_image())))
    fresh = model.clone()
    assert fresh.get_config() == model.get_config()


def test_optimized_model_keeps_its_properties_and_reloads(tmp_path):
    from keras_deeplab.optimize import count_batch_norms, optimize_for_inference

    model = create_model("deeplabv3plus_mobilenetv2", num_classes=NUM_CLASSES, output_stride=8)
    fast = optimize_for_inference(model)
    assert isinstance(fast, SegmentationModel) and _properties(fast) == _properties(model)
    assert count_batch_norms(fast) == 0 < count_batch_norms(model)
    assert fast.get_config()["inference"] == {
        "fold": True,
        "space_to_batch": True,
        "dtype_policy": None,
    }
    x = _image(1)
    assert np.max(np.abs(np.asarray(fast(x)) - np.asarray(model(x)))) < 1e-4
    fast.save(tmp_path / "fast.keras")
    reloaded = keras.models.load_model(tmp_path / "fast.keras")
    assert reloaded.get_config() == fast.get_config()
    assert count_batch_norms(reloaded) == 0
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(fast(x)))


def test_backbone_feature_info_is_in_its_config(tmp_path):
    backbone = keras_deeplab.get_backbone("mobilenetv2_dm05", output_stride=16)
    assert backbone.feature_info == [
        {"name": "stride_4", "stride": 4, "channels": 72},
        {"name": "stride_8", "stride": 8, "channels": 96},
        {"name": "final", "stride": 16, "channels": 160},
    ]
    assert backbone.get_config()["feature_info"] == backbone.feature_info
    backbone.save(tmp_path / "b.keras")
    reloaded = keras.models.load_model(tmp_path / "b.keras")
    assert reloaded.feature_info == backbone.feature_info and reloaded.output_stride == 16
    changed = {**backbone.get_config(), "feature_info": [{"name": "final", "stride": 8}]}
    with pytest.raises(ValueError, match="feature_info"):
        type(backbone).from_config(changed)


def test_adding_an_architecture_is_a_head_and_a_registry_entry(monkeypatch):
    """An FCN-style toy: backbone + a new head, registered without touching DeepLab code."""
    from keras_deeplab import registry
    from keras_deeplab.heads.common import logits_conv

    def score(x, features, args):
        return logits_conv(x, args["num_classes"], name="score_fr", kernel_size=args["kernel"])

    monkeypatch.setitem(registry.HEADS, "score", Head("score", build=score, options={"kernel": 1}))
    toy = Architecture(
        name="fcn_toy",
        heads=lambda args: ("score",),
        options={"kernel": 1},
        default_backbone="mobilenetv2_dm05",
        default_output_stride=32,
    )
    monkeypatch.setitem(registry.ARCHITECTURES, "fcn_toy", toy)
    monkeypatch.setitem(registry.MODELS, "fcn_toy_mobilenetv2_dm05", ("fcn_toy", {"kernel": 3}))
    model = create_model("fcn_toy_mobilenetv2_dm05", num_classes=4)
    assert (model.architecture, model.output_stride) == ("fcn_toy", 32)
    assert model.get_layer("score_fr").kernel_size == (3, 3)
    assert model(_image()).shape == (1, *SIZE, 4)
    assert list_models(architecture="fcn_toy") == ["fcn_toy_mobilenetv2_dm05"]
    same = SegmentationModel.from_config(model.get_config())
    assert same.get_config() == model.get_config()


def test_an_architecture_without_backbone_is_one_graph_function(monkeypatch):
    """U-Net / SegNet style: the architecture builds the whole network itself."""
    from keras_deeplab import registry
    from keras_deeplab.layers import Conv2D

    def graph(x, args):
        x = Conv2D(args["width"], 3, strides=2, padding="same", activation="relu")(x)
        return Conv2D(args["num_classes"], 1, name="logits_semantic")(x)

    toy = Architecture(name="toy_net", graph=graph, options={"width": 4}, default_output_stride=8)
    monkeypatch.setitem(registry.ARCHITECTURES, "toy_net", toy)
    model = SegmentationModel("toy_net", num_classes=2, width=5)
    assert (model.architecture, model.backbone_name, model.feature_info) == ("toy_net", None, None)
    assert (model.preprocessing, model.output_stride, model.get_backbone()) == (
        "symmetric",
        8,
        None,
    )
    assert model(_image()).shape == (1, *SIZE, 2)
    same = SegmentationModel.from_config(model.get_config())
    assert same.get_config() == model.get_config() and same.count_params() == model.count_params()
    with pytest.raises(ValueError, match="give exactly one of heads, graph"):
        registry.register_architecture(Architecture(name="neither"))


def test_load_tflite_returns_a_segmentation_model():
    from tests.official_tflite import official_tflite_dir

    model = keras_deeplab.weights.load_tflite(official_tflite_dir() / "deeplabv3_257_mv_gpu.tflite")
    assert isinstance(model, SegmentationModel)
    assert _properties(model) == {
        **_properties(model),
        "architecture": "deeplabv3",
        "backbone_name": "mobilenetv2_dm05",
        "output_stride": 8,
        "num_classes": 21,
        "activation": None,
        "preprocessing": "symmetric",
    }
    assert model.name == "deeplabv3_mobilenetv2_dm05_os8"


# ---------------------------------------------------------------- fresh interpreters

_CHILD = """
import sys
import numpy as np
import keras
import keras_deeplab
model = keras.models.load_model(sys.argv[1])
print(type(model).__name__, np.max(np.abs(np.asarray(model(np.load(sys.argv[2]))) - np.load(sys.argv[3]))))
print(model.get_config() == __import__("json").load(open(sys.argv[4])))
"""


def _child(*args):
    code = textwrap.dedent(_CHILD)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_keras_file_loads_in_a_fresh_interpreter(tmp_path, monkeypatch):
    model = create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=NUM_CLASSES)
    x = _image(2)
    paths = [tmp_path / n for n in ("m.keras", "x.npy", "y.npy", "config.json")]
    model.save(paths[0])
    np.save(paths[1], x)
    np.save(paths[2], np.asarray(model(x)))
    paths[3].write_text(json.dumps(model.get_config()))

    loaded = _child(*paths)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == ["SegmentationModel", "0.0", "True"]

    # Without `import keras_deeplab` the class is not registered. Simulated here by removing
    # the registration (a second interpreter costs ~10 s of suite time); Keras' own message,
    # which cannot be customised, names the class and the module to import.
    from keras.src.saving import object_registration

    monkeypatch.delitem(
        object_registration.GLOBAL_CUSTOM_OBJECTS, "keras_deeplab>SegmentationModel"
    )
    with pytest.raises(TypeError) as missing:
        keras.models.load_model(paths[0])
    assert "Could not locate class 'SegmentationModel'" in str(missing.value)
    assert "'module': 'keras_deeplab.segmentation_model'" in str(missing.value)


# ---------------------------------------------------------------- training configs


def test_training_config_checks_model_options_when_it_loads(tmp_path):
    from keras_deeplab.training.config import ConfigError, load_config

    root = tmp_path / "no_data_here"  # nothing is read: the checks need no data
    raw = {
        "model": {"name": "deeplabv3_mobilenetv2", "options": {"atrous_rate": [6, 12, 18]}},
        "data": {"source": "directory", "root": str(root)},
    }
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    message = str(info.value)
    assert "model.options: create_model('deeplabv3_mobilenetv2'): unknown argument" in message
    assert "'atrous_rate' -> 'atrous_rates'" in message and "accepted: backbone" in message
    bad_backbone = {"model": {"name": "deeplabv3plus_resnet50", "options": {"backbone": "rn50"}}}
    with pytest.raises(ConfigError, match=r"model.options: Unknown backbone 'rn50'"):
        load_config(bad_backbone)
    with pytest.raises(ConfigError, match=r"model.options: head must be 'aspp' or 'cascade'"):
        load_config(None, ["model.name=deeplabv3_resnet50_beta", "model.options={head: asp}"])
    ok = load_config(None, ["model.name=deeplabv3_resnet50_beta", "model.options={head: cascade}"])
    assert ok.model.options == {"head": "cascade"}


def test_train_command_stops_at_a_model_typo_before_reading_data(tmp_path, capsys, monkeypatch):
    import keras_deeplab.data
    from keras_deeplab.cli import main

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config error")

    monkeypatch.setattr(keras_deeplab.data, "load_data", no_data)
    argv = ["train", "--config", "shapes_demo", "model.options.decoder_filter=128"]
    argv += [f"checkpoint.dir={tmp_path / 'run'}", "train.steps=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.options" in err and "'decoder_filter' -> 'decoder_filters'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
