"""keras_deeplab.precision: the capability check, resolution and errors; the Segmenter's
default inference path (optimize_for_inference) and its precision= argument."""

import warnings

import keras
import numpy as np
import pytest
from conftest import randomize_batch_norms, smooth_image, toy_model

import keras_deeplab
from keras_deeplab import precision
from keras_deeplab.evaluation import Segmenter
from keras_deeplab.evaluation.segmenter import verify_precision

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16", "vendor:GenuineIntel"})  # no AMX
ZEN4 = frozenset({"avx512f", "avx512_bf16", "vendor:AuthenticAMD"})
ZEN3 = frozenset({"avx2", "fma", "vendor:AuthenticAMD"})
PLAIN = frozenset({"avx2", "fma"})


@pytest.fixture
def hardware(monkeypatch):
    """Sets the machine `precision` sees: `hardware(cpu_flags, gpus)`."""

    def set_hardware(flags, gpus=()):
        monkeypatch.setattr(precision, "_hardware", lambda: (frozenset(flags), tuple(gpus)))
        monkeypatch.setattr(precision, "_warned", set())

    return set_hardware


@pytest.mark.parametrize(
    "flags, gpus, expected",
    [
        (AMX, (), "bfloat16"),
        (AVX512_BF16, (), "float32"),
        (ZEN4, (), "bfloat16"),
        (ZEN3, (), "float32"),
        (PLAIN, (), "float32"),
        (PLAIN, (("A100", (8, 0)),), "bfloat16"),
        (PLAIN, (("T4", (7, 5)),), "float16"),
        (AMX, (("A100", (8, 0)), ("V100", (7, 0))), "float16"),  # the weakest GPU decides
    ],
)
def test_native_precision_is_a_capability_check(hardware, flags, gpus, expected):
    hardware(flags, gpus)
    assert precision.native_precision() == expected
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("float32") == "float32"
    assert precision.resolve_precision(None) == "float32"


def test_describe_choice_and_dtype_policy(hardware):
    hardware(AMX)
    assert precision.describe_choice("auto") == "precision auto -> bfloat16 (CPU has amx_bf16)"
    assert precision.describe_choice("float32") == "precision float32"
    assert precision.describe_choice("bfloat16") == "precision bfloat16 (native: CPU has amx_bf16)"
    assert precision.dtype_policy("auto") == "mixed_bfloat16"
    assert precision.dtype_policy("float32") is None
    hardware(PLAIN, (("T4", (7, 5)),))
    assert precision.dtype_policy("auto") == "mixed_float16"
    assert "GPU T4 compute capability 7.5" in precision.describe_choice("auto")
    hardware(PLAIN)
    assert precision.dtype_policy("auto") is None
    assert precision.describe_choice("auto").startswith("precision auto -> float32 (CPU without")
    hardware(ZEN4)
    assert (
        precision.describe_choice("auto") == "precision auto -> bfloat16 (AMD CPU with avx512_bf16)"
    )


def test_unknown_precision_lists_the_allowed_values(hardware):
    hardware(AMX)
    for bad in ("fp16", "mixed_bfloat16", 16, True):
        with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
            precision.resolve_precision(bad)
    with pytest.raises(ValueError, match="purpose must be one of inference, training"):
        precision.resolve_precision("auto", purpose="serving")


def test_float16_on_a_cpu_is_one_error_suggesting_bfloat16(hardware):
    hardware(AMX)
    with pytest.raises(ValueError, match="needs a GPU.*precision='bfloat16'") as info:
        precision.resolve_precision("float16", purpose="training")
    assert "for training" in str(info.value)
    hardware(PLAIN, (("T4", (7, 5)),))
    assert precision.resolve_precision("float16") == "float16"


def test_bfloat16_without_native_support_works_and_warns_once(hardware):
    hardware(AVX512_BF16)
    with pytest.warns(UserWarning, match="no native bfloat16 unit.*slower"):
        assert precision.resolve_precision("bfloat16") == "bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert precision.resolve_precision("bfloat16") == "bfloat16"
        assert precision.dtype_policy("bfloat16") == "mixed_bfloat16"
    hardware(AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve_precision("bfloat16")  # native: no warning


def _mobile_model():
    keras.utils.set_random_seed(1)
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=5)
    return randomize_batch_norms(model, seed=2)


def test_segmenter_optimises_by_default_with_equal_labels():
    model = _mobile_model()
    images = [smooth_image(41, 57, seed=3), smooth_image(33, 49, seed=4)]
    fast = Segmenter(model)
    plain = Segmenter(model, optimize=False)
    assert fast.inference_model is not model and plain.inference_model is model
    assert fast.inference_model.get_config()["inference"]["fold"] is True
    # BN folded: no BatchNormalization left in the graph the Segmenter runs.
    assert keras_deeplab.optimize.count_batch_norms(fast.inference_model) == 0
    assert keras_deeplab.optimize.count_batch_norms(model) > 0
    p_fast, p_plain = fast.predict_proba(images), plain.predict_proba(images)
    for a, b in zip(p_fast, p_plain, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert np.array_equal(a.argmax(-1), b.argmax(-1))


def test_segmenter_bfloat16_computes_in_bfloat16_with_float32_outputs(hardware):
    hardware(AMX)
    model = _mobile_model()
    images = [smooth_image(41, 57, seed=5)]
    seg = Segmenter(model, precision="auto")
    assert seg.precision == "bfloat16"
    dtypes = {layer.compute_dtype for layer in seg.inference_model.layers}
    assert "bfloat16" in dtypes
    assert seg.inference_model.output.dtype == "float32"
    probs = seg.predict_proba(images)[0]
    reference = Segmenter(model).predict_proba(images)[0]
    assert probs.dtype == np.float32
    assert not np.array_equal(probs, reference)  # really computed in another precision
    np.testing.assert_allclose(probs, reference, atol=0.1)
    assert np.mean(probs.argmax(-1) == reference.argmax(-1)) > 0.9


def test_segmenter_precision_errors(hardware):
    hardware(AMX)
    model = toy_model()
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        Segmenter(model, output_stride=4, precision="half")
    with pytest.raises(ValueError, match="needs a GPU"):
        Segmenter(model, output_stride=4, precision="float16")
    with pytest.raises(ValueError, match="needs optimize=True.*precision='float32'"):
        Segmenter(model, output_stride=4, precision="bfloat16", optimize=False)


def test_verify_precision_reports_agreement_and_miou(hardware):
    hardware(AMX)
    model = _mobile_model()
    images = [smooth_image(33, 41, seed=6), smooth_image(41, 33, seed=7)]
    reference = Segmenter(model).predict(images)
    labels = [r.copy() for r in reference]
    labels[0][:5] = 255  # ignored pixels
    same = verify_precision(model, "float32", images, labels)
    assert same["agreement"] == 1.0 and same["miou_difference"] == 0.0
    assert same["miou"] == 1.0 and same["pixels"] == 33 * 41 * 2
    result = verify_precision(model, "bfloat16", images, labels, reference=reference)
    assert result["precision"] == "bfloat16" and result["images"] == 2
    assert 0.9 < result["agreement"] <= 1.0
    assert result["miou_difference"] == pytest.approx(result["miou"] - 1.0)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        verify_precision(model, "bfloat16", images, labels[:1])


def test_to_saved_model_refuses_bad_precision_before_writing(hardware, tmp_path):
    from keras_deeplab.export import to_saved_model

    hardware(AMX)
    model = toy_model()
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        to_saved_model(model, tmp_path / "a", precision="bf16")
    with pytest.raises(ValueError, match="needs a GPU.*bfloat16"):
        to_saved_model(model, tmp_path / "b", precision="float16")
    assert list(tmp_path.iterdir()) == []


def test_model_fingerprint_follows_the_weights():
    from keras_deeplab.export.saved_model import model_fingerprint

    model = toy_model()
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    model.weights[0].assign(model.weights[0] + 1.0)
    assert model_fingerprint(model) != before


@pytest.mark.slow
def test_to_saved_model_bfloat16_verified_and_checked_once(hardware, tmp_path):
    import json

    from keras_deeplab.export import to_saved_model

    hardware(AMX)
    model = _mobile_model()
    images = [smooth_image(33, 41, seed=1), smooth_image(41, 49, seed=2)]
    report_path = tmp_path / "bf16.report.json"
    kwargs = {"sample_images": images, "report_path": report_path, "precision": "auto"}
    report = to_saved_model(model, tmp_path / "bf16", **kwargs)
    assert report["precision"] == "bfloat16" and report["optimized"]
    assert report["precision_choice"] == "precision auto -> bfloat16 (CPU has amx_bf16)"
    check = report["precision_check"]
    assert check["cached"] is False and 0.9 < check["agreement"] <= 1.0
    assert json.loads(report_path.read_text())["precision_check"]["agreement"] == check["agreement"]
    again = to_saved_model(model, tmp_path / "bf16", overwrite=True, **kwargs)
    assert again["precision_check"]["cached"] is True


def test_cli_precision_choices_are_the_package_s():
    from keras_deeplab.cli import PRECISION_CHOICES

    assert PRECISION_CHOICES == precision.PRECISIONS


def test_cli_predict_states_the_precision_and_refuses_bad_ones(hardware, tmp_path, capsys):
    from PIL import Image

    from keras_deeplab.cli import main

    hardware(AMX)
    weights = tmp_path / "w.weights.h5"
    _mobile_model().save_weights(weights)
    image = tmp_path / "a.png"
    Image.fromarray(smooth_image(33, 41)).save(image)
    argv = ["predict", str(image), "--num-classes", "5", "--weights", str(weights)]
    assert main([*argv, "--precision", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert "precision auto -> bfloat16 (CPU has amx_bf16)" in capsys.readouterr().out
    auto = np.asarray(Image.open(tmp_path / "auto" / "a.png"))
    assert main([*argv, "--no-optimize", "--out", str(tmp_path / "plain")]) == 0
    assert "precision float32, graph rewrites off" in capsys.readouterr().out
    plain = np.asarray(Image.open(tmp_path / "plain" / "a.png"))
    assert auto.shape == plain.shape == (33, 41) and np.mean(auto == plain) > 0.9
    assert main([*argv, "--precision", "float16", "--out", str(tmp_path / "f16")]) == 2
    err = capsys.readouterr().err
    assert "needs a GPU" in err and "bfloat16" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([*argv, "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_cli_export_tflite_refuses_precision(tmp_path, capsys):
    from keras_deeplab.cli import main

    argv = ["export", "--format", "tflite", "--precision", "bfloat16", "--out"]
    assert main([*argv, str(tmp_path / "m.tflite")]) == 2
    assert "--quantize" in capsys.readouterr().err


def test_benchmark_report_states_precision_and_bf16_peer_ratio():
    from benchmarks import plan
    from benchmarks.report import peer_rows, precision_lines

    report = {
        "machine": {"native_precision": "bfloat16", "native_precision_reason": "CPU has amx_bf16"},
        "precision_check": {
            "precision": "bfloat16",
            "model": "m",
            "data": "8 VOC",
            "agreement": 0.99671,
            "miou": 0.8337,
            "miou_float32": 0.8409,
            "miou_difference": -0.0072,
            "cached": True,
        },
        "peak": {"gflops": 500.0},
        "peers": {"gflop_per_image": 60.0, "median_ms": 400.0, "gflops": 150.0},
        "peers_bf16": {"median_ms": 200.0, "gflops": 300.0},
        "peer_ours": {
            "gflop_per_image": 75.0,
            "cells": {
                "keras_opt": {"median_ms": 250.0, "gflops": 300.0},
                "keras_opt_bf16": {"median_ms": 100.0, "gflops": 750.0},
            },
        },
    }
    lines = precision_lines(report)
    assert lines[0] == "Precision `auto` on this machine: bfloat16 (CPU has amx_bf16)."
    assert "cached from the previous run" in lines[1] and "**99.67%**" in lines[1]
    assert "(difference -0.0072)" in lines[1]
    text = "\n".join(peer_rows(report))
    assert "| keras-hub, mixed_bfloat16 | 60.0 | 200.0 | 300 | 60 | n/a | n/a |" in text
    assert "vs keras-hub mixed_bfloat16: achieved GFLOP/s **2.50x**, latency 0.50x" in text
    assert "Keras optimised: achieved GFLOP/s **2.00x**" in text
    assert "training images/s" not in text  # nothing trained in this report
    # training images/s in both precisions, each against keras-hub in the same precision
    report["peers"]["train"] = {"crop": 512, "images_per_s": 2.0}
    report["peers_bf16"]["train"] = {"crop": 512, "images_per_s": 4.0, "peak_rss_mb": 9.0}
    report["training"] = [
        {"model": plan.PEER_MODEL, "crop": 513, "images_per_s": 3.0, "precision": "float32"},
        {"model": plan.PEER_MODEL, "crop": 513, "images_per_s": 9.0, "fused_bn": False},
        {"model": plan.PEER_MODEL, "crop": 513, "images_per_s": 10.0, "precision": "bfloat16"},
    ]
    text = "\n".join(peer_rows(report))
    assert "| keras-hub, mixed_bfloat16 | 60.0 | 200.0 | 300 | 60 | 4.00 | 9 |" in text
    assert "training images/s in float32, ours (513) / keras-hub (512): **1.50x**" in text
    assert "training images/s in bfloat16, ours (513) / keras-hub (512): **2.50x**" in text
    assert precision_lines({"machine": {}, "precision_check": {"error": "no data"}}) == [
        "bf16 vs fp32 check: **not run**: no data"
    ]


def test_benchmark_precision_check_is_cached_per_weights_and_precision():
    from conftest import shared_data_dir

    from benchmarks.inference import precision_check
    from keras_deeplab.export.saved_model import model_fingerprint
    from keras_deeplab.weights import load_tflite

    tflite = shared_data_dir("deeplabv3_tflite", "deeplabv3_257_mv_gpu.tflite")
    fingerprint = model_fingerprint(load_tflite(str(tflite)))
    cached = {"fingerprint": fingerprint, "precision": "bfloat16", "agreement": 0.5}
    assert precision_check("bfloat16", cached) == {**cached, "cached": True}


def test_a_model_trained_in_bfloat16_runs_and_exports_in_float32_unless_asked(hardware):
    hardware(AMX)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        trained = toy_model()
    finally:
        keras.config.set_dtype_policy("float32")
    assert precision.model_precision(trained) == "bfloat16"
    assert precision.model_precision(toy_model()) == "float32"
    assert precision.inference_policy(trained, "float32") == "float32"
    assert precision.inference_policy(toy_model(), "float32") is None
    assert precision.inference_policy(trained, "bfloat16") == "mixed_bfloat16"
    seg = Segmenter(trained, output_stride=4)
    assert precision.model_precision(seg.inference_model) == "float32"
    image = smooth_image(21, 25)
    expected = Segmenter(toy_model(), output_stride=4).predict_proba(image)[0]  # same seed
    np.testing.assert_allclose(seg.predict_proba(image)[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="dtype policy 'float32'.*optimize=True"):
        Segmenter(trained, output_stride=4, optimize=False)


def test_training_fallback_is_a_check_of_the_models_layers(hardware):
    """On an AMX CPU, models whose depthwise (or separable) convolutions hold 3% or more of the
    multiply-adds train in float32 under "auto"; plain convolutions, a small depthwise share,
    GPUs and CPUs without AMX never fall back."""
    depthwise = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.DepthwiseConv2D(3)])
    separable = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.SeparableConv2D(4, 3)])
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    # per pixel: 3*3*8 depthwise against 3*3*8*64 + 3*3*64*64 dense multiply-adds (0.2%)
    heavy_head = keras.Sequential(
        [
            keras.Input((None, None, 8)),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.Conv2D(64, 3, padding="same"),
            keras.layers.Conv2D(64, 3, padding="same"),
        ]
    )
    hardware(AMX)
    assert precision.depthwise_share(depthwise) == 1.0
    assert precision.depthwise_share(plain) == 0.0
    assert precision.depthwise_share(heavy_head) == pytest.approx(72 / (72 + 4608 + 36864))
    assert "(100.0% of its multiply-adds) have no AMX kernel" in precision.training_fallback(
        depthwise
    )
    assert "no AMX kernel" in precision.training_fallback(separable)
    assert precision.training_fallback(plain) is None
    assert precision.training_fallback(heavy_head) is None
    nested = keras.Sequential([keras.Input((8, 8, 3)), depthwise])  # found inside sub-models
    assert precision.training_fallback(nested) is not None
    hardware(PLAIN, (("A100", (8, 0)),))
    assert precision.training_fallback(depthwise) is None
    hardware(AVX512_BF16)
    assert precision.training_fallback(depthwise) is None
    hardware(ZEN4)  # AMD's AVX512-BF16 has a depthwise kernel, no faster than float32's
    assert "(100.0% of its multiply-adds) train no faster in bfloat16 here" in (
        precision.training_fallback(depthwise)
    )
    assert precision.training_fallback(heavy_head) is None


def test_the_fallback_splits_the_zoo_heads_on_one_trunk():
    """The MobileNetV2 x0.5 trunk under a light head (measured slower in bf16) is over the
    limit; under PSPNet's head (measured faster in bf16) it is under it."""
    trunk = {"backbone": "mobilenetv2_dm05"}
    light = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=11)
    demo = keras_deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=5, **trunk)
    pspnet = keras_deeplab.create_model("pspnet_mobilenetv2", num_classes=11, **trunk)
    limit = precision.DEPTHWISE_SHARE_LIMIT
    assert precision.depthwise_share(light) > limit
    assert precision.depthwise_share(demo) > limit
    assert precision.depthwise_share(pspnet) < limit
