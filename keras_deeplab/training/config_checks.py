"""Checks of a training configuration beyond its types: value ranges, the model's arguments
(as `create_model` takes them, without building it), the data reader's options, and the
labels once the data is loaded (`check_labels`). `keras_deeplab.training.config.load_config`
runs them; every problem found is one line of one `ConfigError`.

Example:
    ```python
    from keras_deeplab.training.config import load_config

    load_config({"model": {"name": "deeplabv3_mobilenetv2", "options": {"atrous_rate": [6]}}})
    # ConfigError: ... model.options: create_model('deeplabv3_mobilenetv2'): unknown argument
    # 'atrous_rate' (did you mean 'atrous_rate' -> 'atrous_rates'?); accepted: backbone, ...
    ```
"""

import difflib

OUTPUT_STRIDES = (8, 16, 32)  # keras_deeplab.backbones.VALID_OUTPUT_STRIDES, without importing TF


class ConfigError(ValueError):
    """Invalid training configuration; the message lists every problem."""


def build_kwargs(model_config):
    """`create_model(model_config.name, **build_kwargs(model_config))` builds the configured model."""
    kwargs = dict(model_config.options)
    kwargs["num_classes"] = model_config.num_classes
    for key in ("output_stride", "weights", "backbone_weights"):
        value = getattr(model_config, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def semantic_checks(config, errors):
    """Value checks beyond types (names, ranges, sizes); wrongly typed values are skipped."""
    from keras_deeplab.models import list_models

    name = config.model.name
    if isinstance(name, str) and name not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.append(f"model.name: unknown model {name!r}{hint}; see `keras-deeplab models`")
    elif isinstance(name, str) and isinstance(config.model.options, dict):
        _model_argument_checks(config.model, errors)
    if config.model.zero_init_residual is True:
        for key in ("weights", "backbone_weights"):
            if getattr(config.model, key) is not None:
                errors.append(
                    f"model.zero_init_residual: zeroes weights that model.{key} loads; it is "
                    f"for training from random weights: remove one of the two"
                )
    at_least_one = {
        "model.num_classes": config.model.num_classes,
        "train.steps": config.train.steps,
        "train.batch_size": config.train.batch_size,
        "train.cpu_replicas": config.train.cpu_replicas,
        "train.steps_per_epoch": config.train.steps_per_epoch,
        "train.eval_every_epochs": config.train.eval_every_epochs,
        "train.summary_every_steps": config.train.summary_every_steps,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.max_to_keep": config.checkpoint.max_to_keep,
        "data.eval_batch_size": config.data.eval_batch_size,
        "schedule.decay_steps": config.schedule.decay_steps,
    }
    for key, value in at_least_one.items():
        if _number(value) and value < 1:
            errors.append(f"{key}: must be >= 1, got {value}")
    positive = {
        "optimizer.learning_rate": config.optimizer.learning_rate,
        "data.min_scale": config.data.min_scale,
        "data.max_scale": config.data.max_scale,
        "data.scale_step": config.data.scale_step,
        "optimizer.global_clipnorm": config.optimizer.global_clipnorm,
    }
    for key, value in positive.items():
        if _number(value) and value <= 0:
            errors.append(f"{key}: must be > 0, got {value}")
    if config.model.output_stride not in (None, *OUTPUT_STRIDES) and _number(
        config.model.output_stride
    ):
        errors.append(
            f"model.output_stride: must be 8, 16, 32 or null, got {config.model.output_stride}"
        )
    crop = config.data.crop_size
    if isinstance(crop, list) and len(crop) != 2:
        errors.append(f"data.crop_size: expected an int or [height, width], got {crop}")
    replicas, batch = config.train.cpu_replicas, config.train.batch_size
    split = config.train.strategy in ("auto", "mirrored")  # else cpu_replicas is not used
    if split and _number(replicas) and replicas > 1 and _number(batch) and batch % replicas:
        errors.append(
            f"train.batch_size ({batch}) must be a multiple of train.cpu_replicas ({replicas}); "
            "change one of them (train.cpu_replicas=1 trains on one device)"
        )
    momentum = config.train.batch_norm_momentum
    if _number(momentum) and not 0.0 <= momentum < 1.0:
        errors.append(f"train.batch_norm_momentum: must be in [0, 1), got {momentum}")
    top_k = config.loss.top_k_percent_pixels
    if _number(top_k) and not 0.0 < top_k <= 1.0:
        errors.append(f"loss.top_k_percent_pixels: must be in (0, 1], got {top_k}")
    lo, hi = config.data.min_scale, config.data.max_scale
    if _number(lo) and _number(hi) and lo > hi:
        errors.append(f"data.min_scale ({lo}) must be <= data.max_scale ({hi})")
    if config.data.source == "directory" and not config.data.root:
        errors.append("data.root: required when data.source is 'directory'")
    if config.data.source == "tfds" and not config.data.name:
        errors.append("data.name: required (the TFDS dataset name) when data.source is 'tfds'")


def _model_argument_checks(model, errors):
    """`model.options` (and the model fields) as `create_model` would take them: unknown
    keys, unknown backbone or head names and invalid values, found without building."""
    from keras_deeplab.models import check_model_arguments, model_architecture
    from keras_deeplab.segmentation_model import resolve_arguments

    kwargs = build_kwargs(model)
    if kwargs["num_classes"] is None:
        del kwargs["num_classes"]  # null: the data's class count, known later
    try:
        check_model_arguments(model.name, **kwargs)
    except (ValueError, TypeError) as error:
        errors.append(f"model.options: {error}")
        return
    architecture, arguments = model_architecture(model.name)
    arguments.update(kwargs)
    for key in ("weights", "backbone_weights", "name", "multi_scale", "scales"):
        arguments.pop(key, None)
    if not isinstance(arguments.get("num_classes", 1), int) or model.output_stride not in (
        None,
        *OUTPUT_STRIDES,
    ):
        return  # reported by the checks of those fields
    arguments.setdefault("num_classes", 1)  # any valid count: the data's is not known yet
    try:
        resolve_arguments(architecture, arguments)
    except (ValueError, TypeError) as error:
        errors.append(f"model.options: {error}")


DATA_OPTION_SECTIONS = ("options", "eval_options")


def recipe_data(raw, default_source):
    """`(source, {section: option keys})` of a raw config before its overrides."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    source = data.get("source", default_source)
    keys = {}
    for section in DATA_OPTION_SECTIONS:
        options = data.get(section)
        keys[section] = set(options) if isinstance(options, dict) else set()
    return source, keys


def recipe_model(raw, default_name):
    """`(name, option keys)` of a raw config's model before its overrides."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    options = model.get("options")
    return model.get("name", default_name), set(options) if isinstance(options, dict) else set()


def drop_recipe_model_options(config, recipe, overrides):
    """The recipe's `model.options` that an overridden `model.name` does not take: removed
    from `config` and returned (e.g. the demo recipe's `decoder_filters` under
    `model.name=deeplabv3_mobilenetv2`). Options given as overrides are never dropped."""
    from keras_deeplab.models import list_models, model_architecture
    from keras_deeplab.registry import get_architecture

    recipe_name, recipe_keys = recipe
    name, options = config.model.name, config.model.options
    paths = _override_paths(overrides)
    if name == recipe_name or "model.options" in paths or not isinstance(options, dict):
        return []
    if not isinstance(name, str) or name not in list_models():
        return []  # reported by semantic_checks
    accepted = get_architecture(model_architecture(name)[0]).arguments()
    dropped = [
        key
        for key in options
        if key in recipe_keys and key not in accepted and f"model.options.{key}" not in paths
    ]
    for key in dropped:
        del options[key]
    return [f"model.options.{key}" for key in dropped]


def drop_recipe_zero_init(config, overrides):
    """A recipe's `model.zero_init_residual` yields to weights given as overrides: turned off
    and the loading key returned (e.g. the demo recipe with `model.weights=...`). Set by the
    same hand (both in the file, or both overrides), the pair is an error of `semantic_checks`."""
    paths = _override_paths(overrides)
    if config.model.zero_init_residual is not True or "model.zero_init_residual" in paths:
        return None
    for key in ("weights", "backbone_weights"):
        if f"model.{key}" in paths and getattr(config.model, key) is not None:
            config.model.zero_init_residual = False
            return f"model.{key}"
    return None


def _override_paths(overrides):
    return {item.split("=", 1)[0].strip() for item in overrides or () if "=" in item}


def data_option_checks(config, errors, recipe, overrides, sources):
    """Options the source's reader does not take: dropped (returned) if the recipe's, else errors.

    `sources` are the valid `data.source` values (another one is already reported)."""
    from keras_deeplab.data.folders import reader_options

    source = config.data.source
    if source not in sources:
        return []  # already reported
    recipe_source, recipe_keys = recipe
    accepted = reader_options(source)
    paths = _override_paths(overrides)
    dropped = []
    for section in DATA_OPTION_SECTIONS:
        options = getattr(config.data, section)
        if not isinstance(options, dict):
            continue
        unknown = [key for key in options if key not in accepted]
        if source != recipe_source and f"data.{section}" not in paths:
            from_recipe = [
                key
                for key in unknown
                if key in recipe_keys[section] and f"data.{section}.{key}" not in paths
            ]
            for key in from_recipe:
                del options[key]
                dropped.append(f"data.{section}.{key}")
            unknown = [key for key in unknown if key not in from_recipe]
        if unknown:
            close = [difflib.get_close_matches(key, accepted, n=1) for key in unknown]
            hints = [f"{key!r} -> {c[0]!r}" for key, c in zip(unknown, close, strict=True) if c]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            errors.append(
                f"data.{section}: {', '.join(unknown)} not taken by data.source={source!r}{hint}, "
                f"which takes {', '.join(accepted)}; fix: remove "
                f"{'it' if len(unknown) == 1 else 'them'} (override data.{section}={{}} "
                "clears them all)"
            )
    return dropped


def check_labels(loss, source, num_classes=None):
    """Checks that the loss and the model agree with the data's labels, before training.

    Call it once the training data is loaded (and for the evaluation data): a mismatch
    would otherwise be a TensorFlow assertion in the middle of an epoch.

    Args:
        loss: the `LossConfig` (`ignore_label` None means "take the data's").
        source: the `SegmentationData` (its `num_classes` and `ignore_label`).
        num_classes: the model's class count (`model.num_classes`); None takes the data's.

    Raises:
        ConfigError: every disagreement, each with the setting that fixes it.

    Example:
        `check_labels(config.loss, source, config.model.num_classes)`
    """
    problems = []
    data_classes, data_ignore = source.num_classes, source.ignore_label
    if num_classes is not None and num_classes != data_classes:
        problems.append(
            f"model.num_classes={num_classes} but {source.name} has {data_classes} classes; "
            f"fix: leave model.num_classes out (null) to take the data's, or set it to "
            f"{data_classes}"
        )
    if loss.ignore_label is not None and loss.ignore_label != data_ignore:
        fixes = [
            "leave loss.ignore_label out (null) to take the data's",
            f"set loss.ignore_label={data_ignore}",
        ]
        if data_classes <= loss.ignore_label <= 255:
            fixes.append(f"make it the data's with data.options.ignore_label={loss.ignore_label}")
        detail = f"its ignored pixels would reach the loss as label {data_ignore}"
        if 0 <= loss.ignore_label < data_classes:
            detail += f" and its class {loss.ignore_label} would be ignored"
        problems.append(
            f"loss.ignore_label={loss.ignore_label} but {source.name} marks the pixels to "
            f"ignore with {data_ignore} (after its label map): {detail}; "
            f"fix: {', or '.join(fixes)}"
        )
    classes = num_classes or data_classes
    weights = loss.class_weights
    if isinstance(weights, list) and len(weights) != classes:
        problems.append(
            f"loss.class_weights has {len(weights)} entries but the model predicts {classes} "
            "classes; fix: give one weight per class"
        )
    if problems:
        raise ConfigError(
            f"The training config does not fit the data {source.name}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
