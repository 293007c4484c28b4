"""What a training run leaves for `eval`, `predict` and `export`, and how to rebuild from it.

A run directory (`checkpoint.dir`) holds, besides the `ckpt-N` checkpoints and
`config.yaml`:

- `model.json`: the registered model name, the keyword arguments that built it (recipe
  overrides included), the class names of the training data and the step of the final
  weights;
- `model.weights.h5`: the weights at the end of training (Keras weights file).

`load_run(path)` rebuilds the trained model from a run directory, its `model.weights.h5` or
one of its checkpoint prefixes (`run/ckpt-600`): the newer of the final weights and the
latest checkpoint is used, so an interrupted run gives its last checkpoint.
"""

import dataclasses
import json
import os
import re
from pathlib import Path

from keras_deeplab._json import jsonable
from keras_deeplab.export.report import write_report

MODEL_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"
_NOT_BUILD_ARGS = ("weights", "backbone_weights")


@dataclasses.dataclass
class LoadedRun:
    """A model rebuilt from a run: `model`, `name`, `class_names` (or None), `source` (the file read)."""

    model: object
    name: str
    class_names: tuple | None
    source: str


def write_model_spec(run_dir, name, kwargs, class_names=None, weights_step=None):
    """Writes `model.json`: how to rebuild the run's model (`create_model(name, **kwargs)`)."""
    spec = {
        "model": name,
        "kwargs": jsonable({k: v for k, v in kwargs.items() if k not in _NOT_BUILD_ARGS}),
        "class_names": list(class_names) if class_names else None,
        "weights_step": weights_step,
    }
    write_report(Path(run_dir) / MODEL_FILE, spec)


def write_final_weights(run_dir, model, step):
    """Saves `model.weights.h5` atomically and records its step in `model.json`."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".tmp{os.getpid()}.{WEIGHTS_FILE}"
    model.save_weights(str(tmp))
    os.replace(tmp, run_dir / WEIGHTS_FILE)
    spec = read_model_spec(run_dir)
    spec["weights_step"] = int(step)
    write_report(run_dir / MODEL_FILE, spec)
    return run_dir / WEIGHTS_FILE


def read_model_spec(run_dir):
    """The run's `model.json`, or one made from its `config.yaml` (runs of older versions)."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); the run is damaged.") from None
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(
            f"{run_dir}: not a training run directory (no {MODEL_FILE} or config.yaml); pass "
            "the checkpoint.dir of a `keras-deeplab train` run."
        )
    from keras_deeplab.training.config import build_kwargs, load_config

    model = load_config(str(config_path)).model
    return {"model": model.name, "kwargs": build_kwargs(model), "class_names": None}


def _checkpoint_step(prefix):
    match = re.search(r"ckpt-(\d+)$", str(prefix))
    return int(match.group(1)) if match else -1


def _latest_checkpoint(run_dir):
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(run_dir))


def run_dir_of(path):
    """The run directory `path` names (the directory, its weights file or a checkpoint prefix), or None."""
    path = Path(path)
    if path.is_dir():
        return path if (path / MODEL_FILE).is_file() or (path / "config.yaml").is_file() else None
    if path.name == WEIGHTS_FILE and (path.parent / MODEL_FILE).is_file():
        return path.parent
    if re.fullmatch(r"ckpt-\d+", path.name) and Path(f"{path}.index").is_file():
        return path.parent
    return None


def load_run(path):
    """Rebuilds the trained model of a run.

    Args:
        path: a run directory, its `model.weights.h5`, or a checkpoint prefix `DIR/ckpt-N`.

    Returns:
        `LoadedRun`.

    Example:
        ```python
        run = load_run("artifacts/demo/run")
        labels = run.model.predict(images).argmax(-1)
        ```
    """
    from keras_deeplab.models import create_model

    path = Path(path)
    run_dir = run_dir_of(path)
    if run_dir is None:
        raise ValueError(
            f"{path}: not a training run (a directory with {MODEL_FILE} or config.yaml, its "
            f"{WEIGHTS_FILE}, or a checkpoint prefix such as run/ckpt-600)."
        )
    spec = read_model_spec(run_dir)
    model = create_model(spec["model"], **spec["kwargs"])
    class_names = tuple(spec["class_names"]) if spec.get("class_names") else None
    weights = run_dir / WEIGHTS_FILE
    if path.name.startswith("ckpt-"):
        source = str(path)
    elif path.is_dir():
        latest = _latest_checkpoint(run_dir)
        weights_step = spec.get("weights_step")
        newer_checkpoint = latest and (
            not weights.is_file()
            or weights_step is None
            or _checkpoint_step(latest) > int(weights_step)
        )
        source = latest if newer_checkpoint else str(weights)
        if not newer_checkpoint and not weights.is_file():
            raise ValueError(f"{run_dir}: the run has no checkpoint and no {WEIGHTS_FILE} yet.")
    else:
        source = str(path)
    if source.endswith(".weights.h5"):
        from keras_deeplab.weights.loading import load_weights

        load_weights(model, source)
    else:
        _restore_checkpoint(model, source)
    return LoadedRun(model=model, name=spec["model"], class_names=class_names, source=source)


def _restore_checkpoint(model, prefix):
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(model=model).restore(prefix)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{prefix}: this checkpoint does not match the run's model ({first})."
        ) from None
