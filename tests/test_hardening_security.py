"""Security (issue 8): safe `.keras` loading, safe YAML, CLI outputs confined to --out."""

import numpy as np
import pytest
from conftest import TINY_MODEL, random_images, tiny_model
from PIL import Image

from keras_deeplab.cli import main, output_names

MODEL = TINY_MODEL


def _lambda_archive(path, sentinel):
    """A `.keras` file whose Lambda layer would create `sentinel` if its code ever ran."""
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(2, name="dense")(inputs)
    code = f"open({str(sentinel)!r}, 'w').write('pwned')"
    outputs = keras.layers.Lambda(lambda x: (exec(code), x)[1], name="payload")(hidden)
    keras.Model(inputs, outputs).save(path)
    sentinel.unlink(missing_ok=True)  # building the model here ran the code once
    return path


# ----------------------------------------------------------------------------- .keras


def test_deeplab_keras_archive_loads_in_safe_mode(tmp_path):
    """Our layers need no unsafe deserialization: Keras' default safe_mode=True loads it."""
    import keras

    model = tiny_model(3)  # BatchNorm statistics of real activations: logits that vary
    path = tmp_path / "deeplab.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = random_images()
    assert np.abs(np.asarray(model(x))).max() > 0.1  # a fresh model's logits are ~1e-11
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


def test_keras_archive_with_lambda_is_refused_by_our_loader(tmp_path):
    from keras_deeplab.weights.loading import load_weights
    from keras_deeplab.weights.weights_file import UnsafeArchiveError

    sentinel = tmp_path / "pwned.txt"
    path = _lambda_archive(tmp_path / "evil.keras", sentinel)
    model = tiny_model(3)
    with pytest.raises(UnsafeArchiveError) as info:
        load_weights(model, str(path))
    message = str(info.value)
    assert str(path) in message and "Lambda: payload" in message
    assert "save only its weights" in message
    assert not sentinel.exists()


def test_keras_archive_with_lambda_is_refused_by_the_cli(tmp_path, capsys):
    sentinel = tmp_path / "pwned.txt"
    path = _lambda_archive(tmp_path / "evil.keras", sentinel)
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((33, 33, 3), np.uint8)).save(image)
    argv = ["predict", str(image), "--model", MODEL, "--num-classes", "3"]
    assert main(argv + ["--weights", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-deeplab: error: Refusing") and "Traceback" not in err
    assert not sentinel.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- YAML


def test_config_yaml_is_parsed_safely(tmp_path):
    """A `!!python/...` tag is refused (yaml.SafeLoader), never executed."""
    from keras_deeplab.training import ConfigError, load_config

    sentinel = tmp_path / "pwned.txt"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "train:\n"
        f"  steps: !!python/object/apply:os.system ['touch {sentinel}']\n"
        "data:\n"
        "  root: !!python/name:os.system\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "python/object/apply:os.system" in message
    assert not sentinel.exists()


def test_train_cli_refuses_unsafe_yaml(tmp_path, capsys):
    sentinel = tmp_path / "pwned.txt"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {sentinel}']\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-deeplab: error:") and "not valid YAML" in err
    assert not sentinel.exists()


# ------------------------------------------------------------------- CLI output paths


def test_output_names_never_leave_the_output_folder(tmp_path):
    inputs = [
        "../../etc/passwd.jpg",
        "/abs/dir/x.jpg",
        "..jpg",
        ".hidden.png",
        "sub/a.jpg",
        "a.png",
        "we ird;$(rm -rf).jpg",
    ]
    names = output_names(inputs)
    out = (tmp_path / "out").resolve()
    for name in names.values():
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert (out / f"{name}_overlay.png").resolve().parent == out
    assert names[next(p for p in names if p.name == "passwd.jpg")] == "passwd"
    # a.jpg and a.png must not overwrite each other
    assert {names[p] for p in names if p.stem == "a"} == {"a_jpg", "a_png"}
    assert len(set(names.values())) == len(inputs)


def test_predict_writes_only_inside_out(tmp_path, monkeypatch):
    weights = tmp_path / "w.weights.h5"
    tiny_model(3).save_weights(weights)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    Image.fromarray(np.zeros((33, 33, 3), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.chdir(deep)
    before = {p for p in tmp_path.rglob("*")}
    argv = ["predict", "../../x.png", "--model", MODEL, "--num-classes", "3"]
    assert main(argv + ["--weights", str(weights), "--out", "out"]) == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.is_relative_to(deep / "out") for p in created)
    assert {p.name for p in created} == {"out", "x.png", "x_overlay.png", "x_panel.png"}


def test_demo_never_deletes_a_folder_it_did_not_create(tmp_path, capsys):
    precious = tmp_path / "run"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not a keras-deeplab run directory" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"
