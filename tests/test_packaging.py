"""The wheel: every subpackage, the recipes and the entry point in it; it runs from outside the tree.

The wheel is built from a copy of the package sources (so a stale `build/` of the checkout cannot
hide a missing file), unpacked, and used with `PYTHONPATH=<unpacked>` from a working directory
outside the source tree, with this venv's dependencies. Also: `import keras_deeplab` and
`import keras_deeplab.cli` load neither TensorFlow nor Keras, and the subpackages are attributes.
"""

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_deeplab"
TINY_DEMO = [
    "train.steps=2",
    "train.batch_size=8",
    "data.options.num_examples=16",
    "data.eval_options.num_examples=4",
    "data.options.image_size=33",
    "data.crop_size=33",
    "checkpoint.every_steps=1000",
]


def _source_packages():
    """Every folder of the package tree that holds Python modules, as wheel paths."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(f.relative_to(ROOT).as_posix() for f in folders)


def _source_data_files():
    """Every non-Python file of the package tree (recipes and anything else read at run time)."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """(path of the built wheel, folder it was unpacked into)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for item in ROOT.iterdir():  # setup.cfg, pyproject.toml, README.md (long_description), ...
        if item.is_file():
            shutil.copy2(item, src / item.name)
    shutil.copytree(PACKAGE, src / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + [".", "-w", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (path,) = out.glob("keras_deeplab-*.whl")
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unpacked)
    return path, unpacked


def _run(code, cwd, pythonpath=None, timeout=300):
    """Runs `python -c code` in `cwd`, optionally with only `pythonpath` on PYTHONPATH."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_contains_every_package_the_recipes_and_the_entry_point(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    packages = _source_packages()
    assert "keras_deeplab/heads" in packages and "keras_deeplab/configs" in packages
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"package folders missing from the wheel (no __init__.py?): {missing}"
    data = _source_data_files()
    assert "keras_deeplab/configs/shapes_demo.yaml" in data
    assert not [f for f in data if f not in names], "data files missing from the wheel"
    (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    archive = zipfile.ZipFile(path)
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
    assert entry_points["console_scripts"]["keras-deeplab"] == "keras_deeplab.cli:main"
    metadata = archive.read(f"{dist_info}/METADATA").decode().splitlines()
    requires = [line.split(": ", 1)[1] for line in metadata if line.startswith("Requires-Dist")]
    assert "tensorflow==2.21.0" in requires and "ai-edge-litert==2.3.0" in requires
    assert not [r for r in requires if r.startswith("tensorflow-cpu")]
    assert 'tensorflow[and-cuda]==2.21.0; extra == "gpu"' in requires


def test_unpacked_wheel_imports_builds_a_model_and_finds_recipes(wheel, tmp_path):
    path, unpacked = wheel
    version = path.name.split("-")[1]
    recipes = sorted(p.stem for p in (PACKAGE / "configs").glob("*.yaml"))
    result = _run(
        f"""
        import sys
        from pathlib import Path

        import keras_deeplab, keras_deeplab.cli
        here = Path(keras_deeplab.__file__).resolve()
        assert here.is_relative_to({str(unpacked.resolve())!r}), here
        assert not here.is_relative_to({str(ROOT)!r}), here
        assert not {{"tensorflow", "keras"}} & set(sys.modules), "imported TF/Keras eagerly"
        assert keras_deeplab.__version__ == {version!r}, keras_deeplab.__version__

        from keras_deeplab.configs import list_recipes, recipe_path
        assert list_recipes() == {recipes!r}, list_recipes()
        path = recipe_path("shapes_demo")
        assert path.is_file() and path.resolve().is_relative_to(here.parent), path
        assert recipe_path("shapes_demo.yaml") == path == recipe_path("configs/shapes_demo.yaml")

        import numpy as np
        model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
        logits = model(np.zeros((1, 33, 33, 3), "float32"))
        assert tuple(logits.shape) == (1, 33, 33, 3), logits.shape
        print("ok")
        """,
        cwd=tmp_path,
        pythonpath=unpacked,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_unpacked_wheel_cli_help_loads_no_tensorflow(wheel, tmp_path):
    _, unpacked = wheel
    result = _run(
        """
        import runpy, sys
        sys.argv = ["keras-deeplab", "demo", "--help"]
        try:
            runpy.run_module("keras_deeplab.cli", run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), stop.code
        assert "tensorflow" not in sys.modules, "demo --help imported TensorFlow"
        """,
        cwd=tmp_path,
        pythonpath=unpacked,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout and "demo" in result.stdout


@pytest.mark.slow  # the same tiny demo runs from the source tree in tests/test_cli.py
def test_unpacked_wheel_runs_the_demo_outside_the_tree(wheel, tmp_path):
    """`keras-deeplab demo` at a tiny size from the wheel: reads its recipe from the package."""
    _, unpacked = wheel
    result = _run(
        f"""
        import sys
        from pathlib import Path

        import keras_deeplab
        from keras_deeplab.cli import main
        assert Path(keras_deeplab.__file__).resolve().is_relative_to({str(unpacked.resolve())!r})
        sys.exit(main(["demo", "--out", "demo", *{TINY_DEMO!r}]))
        """,
        cwd=tmp_path,
        pythonpath=unpacked,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    out = tmp_path / "demo"
    for name in ("overlays.png", "training_curve.png", "demo_int8.tflite", "saved_model"):
        assert (out / name).exists(), name
    saved = json.loads((out / "saved_model.report.json").read_text())
    assert max(saved["max_abs_diff"].values()) < 1e-3


def test_import_is_lazy_and_subpackages_are_attributes(tmp_path):
    """From the source tree: no TF/Keras on import; README's `keras_deeplab.weights...` works."""
    result = _run(
        """
        import sys
        import keras_deeplab, keras_deeplab.cli
        loaded = {"tensorflow", "keras"} & set(sys.modules)
        assert not loaded, f"import keras_deeplab loaded {loaded}"
        names = dir(keras_deeplab)
        public = ["DeepLabV1", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "create_model",
                  "list_models", "Segmenter", "ConfusionMatrix", "count_macs", "count_params",
                  "get_backbone", "list_backbones", "MultiScaleInputs", "__version__"]
        subpackages = ["weights", "export", "data", "training", "evaluation", "crf", "optimize",
                       "layers", "configs", "heads", "backbones", "models"]
        assert not [n for n in public + subpackages if n not in names], names
        assert set(keras_deeplab.__all__) <= set(names)
        assert callable(keras_deeplab.weights.load_tflite)
        assert callable(keras_deeplab.export.to_tflite)
        for name in public[:-1]:
            assert callable(getattr(keras_deeplab, name)), name
        for name in subpackages:
            assert getattr(keras_deeplab, name).__name__ == f"keras_deeplab.{name}", name
        import os
        assert os.environ["KERAS_BACKEND"] == "tensorflow"
        try:
            keras_deeplab.no_such_name
        except AttributeError as error:
            assert "no_such_name" in str(error)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
        """,
        cwd=ROOT,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_recipe_path_errors_name_the_shipped_recipes(tmp_path):
    from keras_deeplab.configs import list_recipes, recipe_path

    assert "shapes_demo" in list_recipes()
    file = tmp_path / "mine.yaml"
    file.write_text("train: {steps: 1}\n")
    assert recipe_path(file) == file and recipe_path(str(file)) == file
    for bad in ("shapes_dem", "configs/nope.yaml", str(tmp_path / "missing.yaml"), tmp_path):
        with pytest.raises(ValueError, match="shapes_demo") as error:
            recipe_path(bad)
        assert str(bad) in str(error.value)
    assert (ROOT / "configs").is_symlink(), "the checkout's configs/ should point into the package"
    assert (ROOT / "configs" / "shapes_demo.yaml").resolve() == recipe_path("shapes_demo")
