"""train -> eval / predict / export through the run directory, and the CLI's class-count guards."""

import json

import numpy as np
import pytest
from conftest import random_images, random_rgb, save_image, shared_data_dir, tiny_model

from keras_deeplab.cli import main
from keras_deeplab.training.run_dir import MODEL_FILE, WEIGHTS_FILE, load_run

TINY = [
    "train.steps=4",
    "train.batch_size=4",
    "data.options.num_examples=16",
    "data.eval_options.num_examples=4",
    "data.options.image_size=33",
    "data.crop_size=33",
    "checkpoint.every_steps=2",
    "checkpoint.tensorboard=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("chain") / "run"
    argv = ["train", "--config", "configs/shapes_demo.yaml", f"checkpoint.dir={run}", *TINY]
    # A builder override the registry default does not have: the CLI must rebuild it from the run.
    argv.append("model.options.decoder_filters=32")
    assert main(argv) == 0
    return run


def test_train_writes_final_weights_and_model_spec(run_dir):
    spec = json.loads((run_dir / MODEL_FILE).read_text())
    assert spec["model"] == "deeplabv3plus_mobilenetv2"
    assert spec["kwargs"]["decoder_filters"] == 32 and spec["kwargs"]["num_classes"] == 5
    assert spec["weights_step"] == 4
    assert (run_dir / WEIGHTS_FILE).is_file()
    run = load_run(run_dir)
    assert run.source.endswith(WEIGHTS_FILE)
    assert run.model.output_shape[-1] == 5
    from_checkpoint = load_run(run_dir / "ckpt-4")
    x = random_images(seed=1)
    np.testing.assert_allclose(run.model(x), from_checkpoint.model(x), atol=1e-6)
    older = load_run(run_dir / "ckpt-2")  # an earlier checkpoint really is another model
    assert np.abs(np.asarray(older.model(x)) - np.asarray(run.model(x))).max() > 1e-4


def test_run_dir_prefers_a_newer_checkpoint(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    spec = json.loads((copy / MODEL_FILE).read_text())
    spec["weights_step"] = 2  # as if training went on (and was interrupted) after the weights
    (copy / MODEL_FILE).write_text(json.dumps(spec))
    assert load_run(copy).source.endswith("ckpt-4")


def test_eval_predict_export_from_run(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--run", str(run_dir), "--data", "shapes", "--limit", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "deeplabv3plus_mobilenetv2 (5 classes)" in printed
    images = tmp_path / "images"
    images.mkdir()
    save_image(images / "a.png", random_rgb())
    argv = ["predict", str(images), "--weights", str(run_dir), "--out", str(tmp_path / "pred")]
    assert main(argv) == 0
    assert (tmp_path / "pred" / "a.png").exists() or list((tmp_path / "pred").glob("a*"))
    # From a checkpoint of the run (the SavedModel CLI export: tests/test_cli.py).
    tflite = tmp_path / "run.tflite"
    argv = ["export", "--run", str(run_dir / "ckpt-4"), "--format", "tflite", "--input-size", "33"]
    assert main([*argv, "--out", str(tflite)]) == 0
    assert "verified" in capsys.readouterr().out and tflite.stat().st_size > 0


def test_mismatched_classes_are_one_clear_error(run_dir, tmp_path, capsys):
    data = ["--data", "shapes", "--limit", "1", "--out", str(tmp_path / "e")]
    # --num-classes against the run (5 classes): refused
    assert main(["eval", "--run", str(run_dir), "--num-classes", "21", *data]) == 2
    err = capsys.readouterr().err
    assert "--num-classes 21" in err and "5 classes" in err and "Traceback" not in err
    # another model's weights file of 5 classes loaded into a 21-class model: refused
    other = tmp_path / "other.weights.h5"
    tiny_model(5).save_weights(other)
    argv = ["predict", str(save_image(tmp_path / "x.png", random_rgb())), "--weights", str(other)]
    assert main([*argv, "--num-classes", "21", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "5" in err and "21" in err and "--num-classes" in err
    # without --num-classes the class count is read from the file
    assert main([*argv, "--out", str(tmp_path / "p")]) == 0


def test_run_flag_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["eval", "--run", str(tmp_path / "empty"), "--data", "shapes"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a training run" in err and "Traceback" not in err


def test_train_with_a_wrong_ignore_label_stops_before_training(tmp_path, capsys):
    camvid = shared_data_dir("camvid_segnet")
    argv = ["train", "--config", "shapes_demo", "data.source=directory", f"data.root={camvid}"]
    argv += ["loss.ignore_label=11", f"checkpoint.dir={tmp_path / 'run'}", "train.steps=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ignore_label" in err and "255" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("ckpt-*"))
