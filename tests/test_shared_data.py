"""One lookup of the shared data for tests and benchmarks, honouring KERAS_DEEPLAB_SHARED_DATA."""

from pathlib import Path

import pytest

from keras_deeplab._shared_data import DEFAULT_SHARED_DATA, SHARED_DATA_ENV, shared_data_dir


def test_the_variable_is_honoured(tmp_path, monkeypatch):
    (tmp_path / "voc2012_samples").mkdir()
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert shared_data_dir("voc2012_samples") == tmp_path / "voc2012_samples"


def test_missing_data_names_the_path_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        shared_data_dir("camvid_full")
    message = str(error.value)
    assert str(tmp_path / "camvid_full") in message and SHARED_DATA_ENV in message


def test_default_is_beside_the_repository(monkeypatch):
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    assert DEFAULT_SHARED_DATA == Path(__file__).parents[2] / "shared" / "data"
    if DEFAULT_SHARED_DATA.is_dir():
        assert shared_data_dir() == DEFAULT_SHARED_DATA
