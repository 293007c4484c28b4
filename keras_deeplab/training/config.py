"""Training configuration: dataclasses, YAML/JSON loading, type validation, overrides.

A `TrainConfig` has the sections `model`, `data`, `loss`, `optimizer`,
`schedule`, `train` and `checkpoint`; defaults are the official DeepLab values
(`research/deeplab/train.py`, `utils/train_utils.py`). `load_config` reads a YAML
(`yaml.safe_load` rules, plus `1e-4`-style floats) or JSON file, applies
`section.key=value` overrides typed by the field annotations, and reports *every*
problem (unknown keys, wrong types, bad choices, unknown model names) in one
`ConfigError` naming the key path and the expected type.

`data.options` / `data.eval_options` must be options the chosen source's reader takes
(`keras_deeplab.data.folders.reader_options`). When an override changes `data.source`
(e.g. `data.source=directory data.root=DIR` on top of the `shapes_demo` recipe), the
recipe's options the new source does not take (`image_size`, `num_examples`) are dropped
with one warning; options given as overrides are never dropped. The same holds for the
recipe's `model.options` under another `model.name` (the demo's `decoder_filters` for a
DeepLabV3). `check_labels(loss, source, num_classes)` checks, once the data is loaded and
before any step, that the loss's ignore
label, class weights and the model's class count agree with the data. The checks beyond
types (ranges, model arguments, reader options, labels) are in `training.config_checks`.

Example:
    ```python
    config = load_config("configs/voc_deeplabv3plus_xception65.yaml",
                         ["optimizer.learning_rate=0.01", "train.steps=100"])
    ```
"""

import dataclasses
import difflib
import json
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from keras_deeplab.training.config_checks import (
    ConfigError,
    build_kwargs,
    check_labels,
    data_option_checks,
    drop_recipe_model_options,
    drop_recipe_zero_init,
    recipe_data,
    recipe_model,
    semantic_checks,
)
from keras_deeplab.training.optim import OFFICIAL_LAST_LAYERS


@dataclasses.dataclass
class ModelConfig:
    """Which model to build (`keras_deeplab.create_model(name, ...)`).

    Attributes:
        name: registered model name (`keras-deeplab models`).
        num_classes: classes to predict; None takes the data's class count.
        output_stride: encoder output stride; None keeps the registry default.
        weights: None, a `.weights.h5` file or a named preset for the whole model.
        backbone_weights: None, `"imagenet"` or a backbone `.weights.h5` file.
        options: further builder keyword arguments (e.g. `atrous_rates`).
        zero_init_residual: start the last BatchNorm of every residual branch at gamma 0,
            so each residual block begins as the identity (Goyal et al. 2017; torchvision's
            `zero_init_residual`): for training from random weights, so not with `weights`
            or `backbone_weights` (`keras_deeplab.training.residual_init`).
    """

    name: str = "deeplabv3plus_xception65"
    num_classes: int | None = None
    output_stride: int | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    zero_init_residual: bool = False


@dataclasses.dataclass
class DataConfig:
    """Training/evaluation data (`keras_deeplab.data`) and the official augmentation.

    Attributes:
        source: `"shapes"` (built-in synthetic set), `"directory"` (VOC,
            Cityscapes, ADE20K or paired-folder layouts) or `"tfds"`.
        root: dataset directory (`directory`) or TFDS `data_dir` (`tfds`).
        name: TFDS dataset name (`tfds`).
        split: training split.
        eval_split: evaluation split (None: no evaluation during training).
        options: extra keyword arguments of the source function.
        eval_options: keyword arguments overriding `options` for the evaluation split
            (e.g. a different `num_examples` for `shapes`).
        crop_size: training crop, an int or `[height, width]` (official 513).
        min_scale, max_scale, scale_step: random scale augmentation (0.5, 2.0, 0.25).
        flip: random horizontal flip.
        rotate90: turn each image by a random multiple of 90 degrees before the other
            augmentation (for data without an up direction: aerial, microscopy, `shapes`).
        eval_batch_size: evaluation batch size; None (default) is one image per replica, and
            a value below the replica count is raised to it (with a warning), so no replica
            idles in an evaluation.
    """

    source: Literal["shapes", "directory", "tfds"] = "shapes"
    root: str | None = None
    name: str | None = None
    split: str = "train"
    eval_split: str | None = "val"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    crop_size: int | list[int] = 513
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip: bool = True
    rotate90: bool = False
    eval_batch_size: int | None = None


@dataclasses.dataclass
class LossConfig:
    """Softmax cross-entropy options (official `train_utils.py`).

    Attributes:
        ignore_label: label without loss; None takes the data's (255, or ADE20K's).
        class_weights: one loss weight per class (None: all 1), or `"median_frequency"`:
            SegNet's weights computed from the training labels before the first step
            (`training.class_weights`; printed and recorded in the run's `config.yaml`).
        top_k_percent_pixels: hard-pixel mining fraction (1.0: all pixels).
        hard_example_mining_step: steps to anneal the kept fraction from 1 to the target.
    """

    ignore_label: int | None = None
    class_weights: list[float] | Literal["median_frequency"] | None = None
    top_k_percent_pixels: float = 1.0
    hard_example_mining_step: int = 0


@dataclasses.dataclass
class OptimizerConfig:
    """Optimizer, weight decay and learning-rate multipliers (see `training.optim`).

    Attributes:
        type: `"momentum"` (official, TF1 momentum semantics) or `"adam"`.
        learning_rate: base learning rate (official VOC train_aug 0.007).
        momentum: momentum (0.9).
        weight_decay: L2 weight decay; None uses the backbone's official value.
        regularize_depthwise: also decay depthwise kernels (official False).
        bias_multiplier: gradient factor of biases (official 2).
        last_layer_multiplier: gradient factor of `last_layers` (official 1; v2 10).
        last_layers: layer-name prefixes of the "last layers".
        batch_norm_multiplier: gradient factor of BN gamma/beta (0 freezes them).
        global_clipnorm: clip the gradient (after the multipliers, summed over replicas)
            to this global L2 norm; None (official) does not clip.
    """

    type: Literal["momentum", "adam"] = "momentum"
    learning_rate: float = 0.007
    momentum: float = 0.9
    weight_decay: float | None = None
    regularize_depthwise: bool = False
    bias_multiplier: float = 2.0
    last_layer_multiplier: float = 1.0
    last_layers: list[str] = dataclasses.field(default_factory=lambda: list(OFFICIAL_LAST_LAYERS))
    batch_norm_multiplier: float = 1.0
    global_clipnorm: float | None = None


@dataclasses.dataclass
class ScheduleConfig:
    """Learning-rate policy (see `training.schedules`).

    Attributes:
        policy: `"poly"` or `"step"`.
        power: poly power (0.9).
        end_learning_rate: poly final rate (0).
        decay_steps: step policy period (2000).
        decay_rate: step policy factor (0.1).
        warmup_steps: slow-start steps (0: none).
        warmup_learning_rate: slow-start rate (official 1e-4).
        warmup: `"linear"` ramp or `"constant"` (official burn-in `none`).
    """

    policy: Literal["poly", "step"] = "poly"
    power: float = 0.9
    end_learning_rate: float = 0.0
    decay_steps: int = 2000
    decay_rate: float = 0.1
    warmup_steps: int = 0
    warmup_learning_rate: float = 1e-4
    warmup: Literal["linear", "constant"] = "linear"


@dataclasses.dataclass
class TrainLoopConfig:
    """The training loop.

    Attributes:
        steps: total training steps (official `training_number_of_steps`).
        batch_size: global batch size (split over replicas).
        steps_per_epoch: steps per epoch; None derives it from the data size.
        seed: seed of initialisation and data order (per-epoch seeds derive from it).
        fine_tune_batch_norm: train BN statistics (False: official frozen-statistics mode).
        sync_batch_norm: synchronise BN statistics across replicas (when fine-tuning
            with more than one replica).
        batch_norm_momentum: BN moving-average momentum during training (None: the
            model's, officially 0.9997 / 0.997; use ~0.9 for runs of a few thousand steps).
        precision: `"float32"` (default), `"bfloat16"`, `"float16"` or `"auto"` (bfloat16 on
            AMX CPUs, AMD CPUs with AVX512-BF16 and GPUs of compute capability >= 8.0, float16
            on older GPUs, float32 otherwise; on such a CPU a model whose depthwise
            convolutions hold 3% or more of its multiply-adds trains in float32, since they
            are no faster in bfloat16 there: `keras_deeplab.precision.training_fallback`).
            Reduced precision computes under a Keras
            mixed policy: float32 master weights and a float32 loss; float16 adds dynamic
            loss scaling. float16 on a machine without a GPU is an error (use bfloat16).
        mixed_precision: deprecated alias of `precision` (`"none"` is `"float32"`); a
            one-line warning, and an error if it disagrees with `precision`.
        strategy: `"auto"` (multi-worker from TF_CONFIG, all local GPUs, else one
            device), `"default"`, `"mirrored"` or `"multi_worker"`.
        cpu_replicas: on a machine without GPUs (strategy `"auto"` or `"mirrored"`), train
            this many replicas on as many logical CPU devices, each on `cores / n` threads
            (`keras_deeplab.training.distribute.split_cpu`; BatchNorm per replica unless
            `sync_batch_norm`). Small models gain: the demo's epochs ran 1.05-1.5x faster on 2
            replicas on 2 cores (`python -m benchmarks.cpu_replicas`). Needs a fresh process
            (the CLI); else a warning and one device. Not used where GPUs are visible, nor by
            strategies `"default"` and `"multi_worker"`.
        communication: multi-worker collectives: `"auto"` (NCCL when the workers have
            GPUs, RING on CPUs), `"ring"` or `"nccl"` (GPUs only).
        deterministic: enable TensorFlow op determinism
            (`tf.config.experimental.enable_op_determinism()`): repeatable results on GPUs
            too, slower; an op without a deterministic GPU kernel then raises an error.
        eval_every_epochs: evaluate every n epochs (and at the end).
        summary_every_steps: TensorBoard scalar period.
        num_summary_images: images in the overlay summaries.
        verbose: 1 shows a progress bar per epoch (one line per epoch where standard output
            is not a terminal, e.g. a log file), 2 one line per epoch, 0 is silent.
    """

    steps: int = 30000
    batch_size: int = 16
    steps_per_epoch: int | None = None
    seed: int = 0
    fine_tune_batch_norm: bool = True
    sync_batch_norm: bool = True
    batch_norm_momentum: float | None = None
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    mixed_precision: Literal["none", "auto", "bfloat16", "float16"] | None = None
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    communication: Literal["auto", "ring", "nccl"] = "auto"
    cpu_replicas: int = 1
    deterministic: bool = False
    eval_every_epochs: int = 1
    summary_every_steps: int = 10
    num_summary_images: int = 4
    verbose: Literal[0, 1, 2] = 1


@dataclasses.dataclass
class CheckpointConfig:
    """Checkpoints and logs.

    Attributes:
        dir: run directory (checkpoints; re-running resumes from its latest one).
        every_steps: save every n steps (and at every epoch end).
        max_to_keep: checkpoints kept.
        log_dir: TensorBoard directory (None: `<dir>/logs`).
        tensorboard: write TensorBoard summaries.
    """

    dir: str = "runs/deeplab"
    every_steps: int = 1000
    max_to_keep: int = 3
    log_dir: str | None = None
    tensorboard: bool = True


@dataclasses.dataclass
class TrainConfig:
    """Everything `train_from_config` needs; every section has official defaults."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-4` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_text(text, what):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} is not valid YAML/JSON: {error}") from None


# ----------------------------------------------------------------------- validation


def _describe(tp):
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping (section)"
    return tp.__name__


def _got(value):
    kind = "null" if value is None else type(value).__name__
    return f"got {kind} {value!r}" if value is not None else "got null"


def _convert(value, tp, path, errors):
    """`value` checked against annotation `tp`; problems are appended to `errors`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            trial = []
            result = _convert(value, arm, path, trial)
            if not trial:
                return result
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_convert(v, item, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, path, errors)
        errors.append(f"{path}: expected {_describe(tp)}, {_got(value)}")
        return tp()
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    errors.append(f"{path}: expected {_describe(tp)}, {_got(value)}")
    return value


def _build(cls, raw, path, errors):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{where}: unknown key{hint}; valid keys: {', '.join(names)}")
            continue
        kwargs[key] = _convert(value, hints[key], where, errors)
    return cls(**kwargs)


# ------------------------------------------------------------------------ overrides


def _field_type(path):
    """Annotation of the dotted `path` (e.g. `optimizer.learning_rate`), or None."""
    cls = TrainConfig
    tp = None
    for part in path.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = hints[part]
        cls = tp
    return tp


def _fits(value, tp):
    trial = []
    _convert(value, tp, "", trial)
    return not trial


def _override_value(path, text):
    """`text` parsed as YAML, then adapted to the field type of `path` when that helps.

    A string field keeps the raw text (`model.name=123`), and a list field also takes
    comma-separated items (`data.crop_size=513,513`).
    """
    value = _parse_text(text, f"override {path}={text}")
    tp = _field_type(path)
    if tp is None or _fits(value, tp):
        return value
    if _fits(text, tp):
        return text
    if isinstance(value, str) and "," in value:
        items = [_parse_text(part, f"override {path}={text}") for part in value.split(",")]
        if _fits(items, tp):
            return items
    return value


def apply_overrides(raw, overrides):
    """Sets `section.key=value` entries in the raw config mapping `raw` (in place)."""
    errors = []
    for item in overrides or ():
        if "=" not in item:
            errors.append(f"override {item!r}: expected section.key=value")
            continue
        path, text = item.split("=", 1)
        path = path.strip()
        parts = path.split(".")
        if len(parts) < 2:
            errors.append(f"override {item!r}: the key must name a section, e.g. train.steps=100")
            continue
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = _override_value(path, text.strip())
    return errors


# ------------------------------------------------------------------------ precision

_ALIAS = {"none": "float32", "auto": "auto", "bfloat16": "bfloat16", "float16": "float16"}


def _precision_alias(config, raw, errors):
    """Maps the deprecated `train.mixed_precision` onto `train.precision` (in place).

    Returns the deprecation message (None when the alias is not used)."""
    train = config.train
    if not isinstance(train, TrainLoopConfig) or train.mixed_precision not in _ALIAS:
        return None
    mapped = _ALIAS[train.mixed_precision]
    section = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if "precision" in section and train.precision != mapped:
        errors.append(
            f"train.mixed_precision={train.mixed_precision!r} (deprecated) disagrees with "
            f"train.precision={train.precision!r}; fix: remove train.mixed_precision"
        )
        return None
    message = (
        f"train.mixed_precision is deprecated: use train.precision={mapped} "
        f"(read mixed_precision={train.mixed_precision} as precision={mapped})."
    )
    train.precision, train.mixed_precision = mapped, None
    return message


# -------------------------------------------------------------------------- loading


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
    return _parse_text(text, str(path))


def load_config(source=None, overrides=()):
    """A validated `TrainConfig` from a YAML/JSON path, a mapping or a `TrainConfig`.

    Args:
        source: path (`.yaml`, `.yml` or `.json`), dict, `TrainConfig` or None (defaults).
        overrides: `section.key=value` strings applied on top (values parsed as YAML
            and checked against the field types).

    Raises:
        ConfigError: listing every unknown key, wrong type and invalid value with its
            key path and the expected type.
    """
    what = ""
    if source is None:
        raw = {}
    elif isinstance(source, TrainConfig):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = json.loads(json.dumps(source))
    else:
        what = f" {source}"
        raw = _read(source)
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Training config{what}: the top level must be a mapping of sections, "
            f"got {type(raw).__name__}."
        )
    recipe = recipe_data(raw, DataConfig.source)
    recipe_net = recipe_model(raw, ModelConfig.name)
    errors = apply_overrides(raw, overrides)
    config = _build(TrainConfig, raw, "", errors)
    dropped_options = drop_recipe_model_options(config, recipe_net, overrides)
    weights_key = drop_recipe_zero_init(config, overrides)
    semantic_checks(config, errors)
    deprecated = _precision_alias(config, raw, errors)
    sources = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    dropped = data_option_checks(config, errors, recipe, overrides, sources)
    if errors:
        raise ConfigError(
            f"Invalid training config{what} ({len(errors)} problem{'s' if len(errors) > 1 else ''}):\n"
            + "\n".join(f"  - {e}" for e in errors)
        )
    if deprecated:
        warnings.warn(deprecated, FutureWarning, stacklevel=2)
    if dropped:
        warnings.warn(
            f"Training config{what}: {', '.join(dropped)} (options of the recipe's data.source="
            f"{recipe[0]!r}) dropped for data.source={config.data.source!r}.",
            UserWarning,
            stacklevel=2,
        )
    if dropped_options:
        warnings.warn(
            f"Training config{what}: {', '.join(dropped_options)} (options of the recipe's "
            f"model {recipe_net[0]!r}) dropped for model.name={config.model.name!r}.",
            UserWarning,
            stacklevel=2,
        )
    if weights_key:
        warnings.warn(
            f"Training config{what}: model.zero_init_residual (the recipe's) turned off: "
            f"{weights_key} loads the weights it would zero.",
            UserWarning,
            stacklevel=2,
        )
    return config


__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "apply_overrides",
    "build_kwargs",
    "check_labels",
    "load_config",
]
