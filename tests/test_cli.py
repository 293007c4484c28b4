"""The `keras-deeplab` command line: models, table, presets, convert and its errors."""

import re

import keras
import numpy as np
import pytest

import keras_deeplab
from keras_deeplab.cli import main
from tests.official_tflite import official_tflite_dir
from tests.tf1_checkpoints import randomize_weights, write_model_checkpoint


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == keras_deeplab.list_models()


def test_table_one_model(capsys):
    assert main(["table", "deeplabv3_mobilenetv2", "--input-size", "513"]) == 0
    out = capsys.readouterr().out
    assert "| `deeplabv3_mobilenetv2` | 16 | 2,146,645 | 2,113,557 | 2.74G |" in out


def test_presets(capsys):
    assert main(["presets"]) == 0
    assert "pascal_voc_mnv2_dm05_os8" in capsys.readouterr().out


def test_convert_from_tflite(tmp_path, capsys):
    out = tmp_path / "voc.weights.h5"
    tflite = official_tflite_dir() / "deeplabv3_257_mv_gpu.tflite"
    assert main(["convert", "--from-tflite", str(tflite), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model: deeplabv3_mobilenetv2_dm05_os8" in printed
    assert "output_stride=8" in printed and "num_classes=21" in printed
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", weights=str(out))
    assert model(np.zeros((1, 33, 33, 3), "float32")).shape == (1, 33, 33, 21)


def test_convert_from_tf_checkpoint(tmp_path, capsys):
    source = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05", num_classes=19)
    randomize_weights(source)
    prefix, _ = write_model_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"), source)
    out = tmp_path / "city.weights.h5"
    argv = ["convert", "--from-tf-checkpoint", prefix, "--model", "deeplabv3_mobilenetv2_dm05"]
    assert main(argv + ["--num-classes", "19", "--out", str(out)]) == 0
    assert "deeplabv3_mobilenetv2_dm05" in capsys.readouterr().out
    loaded = keras_deeplab.create_model(
        "deeplabv3_mobilenetv2_dm05", num_classes=19, weights=str(out)
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    np.testing.assert_array_equal(source(x), loaded(x))
    # The wrong class count is one clear error on stderr, exit code 2, nothing written.
    bad = tmp_path / "bad.weights.h5"
    assert main(argv + ["--num-classes", "21", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-deeplab: error:") and "Traceback" not in err
    assert not bad.exists()
    keras.backend.clear_session()


def test_convert_errors(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert (
        main(["convert", "--from-tflite", str(text), "--out", str(tmp_path / "x.weights.h5")]) == 2
    )
    assert str(text) in capsys.readouterr().err
    assert main(["convert", "--from-tflite", str(text), "--out", str(tmp_path / "x.h5")]) == 2
    assert ".weights.h5" in capsys.readouterr().err
    assert (
        main(["convert", "--from-tf-checkpoint", "p", "--out", str(tmp_path / "y.weights.h5")]) == 2
    )
    assert "--model" in capsys.readouterr().err


@pytest.mark.slow  # suite time: 17 s; test_cli_chain exports from a run
def test_export_saved_model_cli(tmp_path, capsys):
    import json

    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
    weights = tmp_path / "w.weights.h5"
    model.save_weights(weights)
    out = tmp_path / "sm" / "1"
    argv = ["export", "--model", "deeplabv3_mobilenetv2_dm05_os8", "--num-classes", "3"]
    argv += ["--weights", str(weights), "--format", "saved_model", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and (out / "saved_model.pb").exists()
    report = json.loads((tmp_path / "sm" / "1.report.json").read_text())
    assert report["passed"] is True
    # A second export to the same place is refused without --overwrite.
    assert main(argv) == 2
    assert "overwrite" in capsys.readouterr().err


def test_eval_and_predict_with_official_tflite(tmp_path, capsys):
    import json

    from tests.official_tflite import shared_data_dir

    voc = shared_data_dir() / "voc2012_samples"
    tflite = str(official_tflite_dir() / "deeplabv3_257_mv_gpu.tflite")
    assert main(["eval", "--data", str(voc), "--from-tflite", tflite, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "person" in printed
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_images"] == 8 and scores["miou"] > 0.75
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "per_class.csv").read_text().startswith("class,iou")
    image = voc / "JPEGImages" / "2007_000129.jpg"
    assert main(["predict", str(image), "--from-tflite", tflite, "--out", str(tmp_path / "p")]) == 0
    from PIL import Image

    labels = Image.open(tmp_path / "p" / "2007_000129.png")
    assert labels.mode == "P" and labels.size == Image.open(image).size
    assert {2, 15} <= set(np.unique(np.asarray(labels)))  # bicycle, person
    assert (tmp_path / "p" / "2007_000129_overlay.png").exists()
    assert (tmp_path / "p" / "2007_000129_panel.png").exists()


def test_predict_bad_image_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    weights = tmp_path / "w.weights.h5"
    keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3).save_weights(
        weights
    )
    argv = [
        "predict",
        str(bad),
        "--num-classes",
        "3",
        "--weights",
        str(weights),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_export_tflite_cli_with_argmax(tmp_path, capsys):
    import json

    weights = tmp_path / "w.weights.h5"
    keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3).save_weights(
        weights
    )
    out = tmp_path / "m.tflite"
    argv = ["export", "--model", "deeplabv3_mobilenetv2_dm05_os8", "--num-classes", "3"]
    argv += ["--weights", str(weights), "--format", "tflite", "--input-size", "49", "--argmax"]
    assert main(argv + ["--out", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "m.labels.txt").exists()
    report = json.loads((tmp_path / "m.tflite.report.json").read_text())
    assert report["passed"] is True


@pytest.mark.slow  # suite time: the default run must stay under 15 min on CI
def test_demo_end_to_end_at_tiny_size(tmp_path, capsys):
    """`make demo`'s job with a few steps: trains, evaluates, writes the PNGs and verified exports.

    40 steps, not fewer: before about 30 the model's logits barely depend on the image (1e-5
    change between an image and a black one at 3 steps), so no int8 error could show.
    """
    import json

    out = tmp_path / "demo"
    overrides = [
        "train.steps=40",
        "train.batch_size=16",  # the bounds below were measured at batch 16
        "train.eval_every_epochs=1000",  # one evaluation, at the end
        "data.options.num_examples=32",
        "data.eval_options.num_examples=8",
        "data.options.image_size=48",
        "data.crop_size=49",
        "checkpoint.every_steps=1000",
    ]
    assert main(["demo", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"held-out shapes mIoU: [\d.]+ \(target >= 0.85\); \d+ s for data", printed)
    for name in ("overlays.png", "training_curve.png", "demo_int8.tflite", "saved_model"):
        assert (out / name).exists(), name
        assert str(out / name) in printed
    assert (out / "saved_model" / "saved_model.pb").exists()
    report = json.loads((out / "demo_int8.report.json").read_text())
    assert report["quantize"] == "int8" and report["num_images"] == 4
    assert report["input_size"] == [49, 49]  # the 48-px images padded to k * 16 + 1, as evaluated
    # Measured at step 40 on the 4 verification images (48 x 48 then): Keras logits in [-12.8, 9.7],
    # top-2 margin >= 1.75 at every pixel, int8 logit error 0.197, agreement 1.0; calibrating on
    # images // 8 instead gives an error of 4.5. Bound: 3x the measured error, and no flipped
    # pixel beyond 0.1 % (the error is 9x smaller than the smallest margin).
    assert report["max_abs_diff_delegate"] < 0.6, report["max_abs_diff_delegate"]
    assert report["argmax_agreement"] >= 0.999, report["argmax_agreement"]
    saved = json.loads((out / "saved_model.report.json").read_text())
    assert max(saved["max_abs_diff"].values()) < 1e-3
