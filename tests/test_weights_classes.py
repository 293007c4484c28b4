"""Class counts of weights files: `weights_num_classes` and `class_mismatch="error"`."""

import warnings

import numpy as np
import pytest
from conftest import TINY_MODEL, tiny_model

import keras_deeplab
from keras_deeplab.weights import ClassCountMismatchError, weights_num_classes
from keras_deeplab.weights.loading import load_weights
from keras_deeplab.weights.presets import WEIGHTS_DIR_ENV

BACKBONE = "mobilenetv2_dm05"


def _saved(model, path):
    model.save_weights(path)
    return str(path)


def test_weights_num_classes_of_files_archives_and_presets(tmp_path, monkeypatch):
    v3 = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=11)
    assert weights_num_classes(_saved(v3, tmp_path / "camvid.weights.h5")) == 11
    v3.save(tmp_path / "camvid.keras")
    assert weights_num_classes(str(tmp_path / "camvid.keras")) == 11
    # DeepLab v2: four logits branches, one count.
    v2 = keras_deeplab.DeepLabV2(backbone=BACKBONE, num_classes=3)
    assert weights_num_classes(_saved(v2, tmp_path / "v2.weights.h5")) == 3
    # A preset name resolves as `resolve_weights` does.
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    _saved(v2, tmp_path / "pascal_voc_mnv2_dm05_os8.weights.h5")
    assert weights_num_classes("pascal_voc_mnv2_dm05_os8") == 3


def test_weights_num_classes_is_none_without_logits(tmp_path):
    model = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=21)
    backbone = model.get_layer("mobilenetv2_dm05_backbone")
    assert weights_num_classes(_saved(backbone, tmp_path / "backbone.weights.h5")) is None


def test_weights_num_classes_bad_file(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="Cannot read weights file .*bad.weights.h5"):
        weights_num_classes(str(bad))
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        weights_num_classes(str(tmp_path / "nope.weights.h5"))


def test_class_mismatch_error_names_file_counts_and_fix(tmp_path):
    path = _saved(
        keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=11), tmp_path / "camvid.weights.h5"
    )
    target = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=21)
    before = [w.copy() for w in target.get_weights()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning and a skip
        with pytest.raises(ClassCountMismatchError) as error:
            load_weights(target, path, class_mismatch="error")
    assert isinstance(error.value, ValueError)
    assert (error.value.file_classes, error.value.model_classes) == (11, 21)
    assert str(error.value) == (
        f"{path} holds 11 classes, the model 21: build it with num_classes=11 "
        "(CLI: --num-classes 11, or leave --num-classes out to infer it from the weights)"
    )
    assert "\n" not in str(error.value)
    # Nothing was loaded.
    assert all(np.array_equal(a, b) for a, b in zip(before, target.get_weights(), strict=True))
    # The same file and model with the default: fine-tuning keeps the warning and skip.
    with pytest.warns(UserWarning, match="11 classes, the model 21"):
        load_weights(target, path)
    # And a matching model loads with "error" silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=11)
        load_weights(same, path, class_mismatch="error")


def test_class_mismatch_error_does_not_hide_other_differences(tmp_path):
    path = _saved(
        keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=11), tmp_path / "v3.weights.h5"
    )
    target = keras_deeplab.DeepLabV3Plus(backbone=BACKBONE, num_classes=21)
    with pytest.raises(ValueError, match="does not match.*The logits also differ") as error:
        load_weights(target, path, class_mismatch="error")
    assert not isinstance(error.value, ClassCountMismatchError)


def test_class_mismatch_argument_is_checked(tmp_path):
    model = keras_deeplab.DeepLabV3(backbone=BACKBONE, num_classes=2)
    path = _saved(model, tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match="class_mismatch must be one of 'skip', 'error'"):
        load_weights(model, path, class_mismatch="warn")


def test_create_model_keeps_skip_and_warning(tmp_path):
    path = _saved(tiny_model(11), tmp_path / "camvid.weights.h5")
    with pytest.warns(UserWarning, match="except the logits layer"):
        model = keras_deeplab.create_model(TINY_MODEL, weights=path)
    assert model.output_shape[-1] == 21
