"""`train_from_config`: config -> strategy, data, model -> `Trainer.fit`.

The entry point of `keras-deeplab train --config FILE [section.key=value ...]`.
"""

import dataclasses
import inspect
import warnings
from pathlib import Path

import keras
import tensorflow as tf

import keras_deeplab.training.run_dir as run_files
from keras_deeplab.training.config import TrainConfig, build_kwargs, check_labels, load_config
from keras_deeplab.training.distribute import cpu_split, make_strategy
from keras_deeplab.training.trainer import Trainer


def _data_module():
    try:
        import keras_deeplab.data as data
    except ImportError as error:  # pragma: no cover - the data package ships with the library
        raise ValueError(f"keras_deeplab.data is not available ({error}).") from None
    for name in ("load_data", "train_pipeline", "eval_pipeline", "steps_per_epoch"):
        if not hasattr(data, name):  # pragma: no cover
            raise ValueError(f"keras_deeplab.data lacks {name}(); update keras_deeplab.")
    return data


def load_source(data_config, split, evaluation=False):
    """The `SegmentationData` of `split` described by a `DataConfig`.

    `evaluation=True` merges `data_config.eval_options` over `data_config.options`.
    """
    data = _data_module()
    options = dict(data_config.options)
    if evaluation:
        options.update(data_config.eval_options)
    if data_config.source == "shapes":
        return data.load_data("shapes", split, **options)
    if data_config.source == "tfds":
        if data_config.root:
            options.setdefault("data_dir", data_config.root)
        return data.load_data(f"tfds:{data_config.name}", split, **options)
    return data.load_data(data_config.root, split, **options)


def _median_frequency(source, num_classes):
    """SegNet's median-frequency class weights of the training labels, printed once."""
    from keras_deeplab.training.class_weights import median_frequency_weights, source_masks

    weights = median_frequency_weights(source_masks(source), num_classes, source.ignore_label)
    print(
        f"loss.class_weights: median frequency over {source.name}: "
        + ", ".join(f"{name} {w:.4f}" for name, w in zip(source.class_names, weights, strict=False))
    )
    return weights


def eval_batch_size(requested, replicas):
    """`data.eval_batch_size` with at least one image per replica (None: one per replica).

    Example:
        `eval_batch_size(1, 4)` is 4 (with a warning), `eval_batch_size(None, 2)` is 2.
    """
    if requested is None:
        return replicas
    if requested < replicas:
        warnings.warn(
            f"data.eval_batch_size={requested} leaves replicas idle: evaluating with "
            f"{replicas} images per batch (one per replica). Set data.eval_batch_size to a "
            f"multiple of {replicas}, or null for one image per replica.",
            stacklevel=3,
        )
        return replicas
    return requested


def model_builder(model_config):
    """A function building the configured model (called by the trainer in the strategy scope)."""
    from keras_deeplab.models import create_model
    from keras_deeplab.training.residual_init import zero_init_residual

    kwargs = build_kwargs(model_config)

    def build():
        model = create_model(model_config.name, **kwargs)
        if model_config.zero_init_residual:
            zero_init_residual(model)
        return model

    return build


def train_from_config(config, overrides=(), strategy=None):
    """Trains the model a training config describes; resumes if its run directory has checkpoints.

    Args:
        config: path to a YAML/JSON config, a mapping or a `TrainConfig`.
        overrides: `section.key=value` strings (e.g. `["train.steps=100"]`).
        strategy: a `tf.distribute.Strategy`; default from `train.strategy`.

    Returns:
        `TrainResult` (see `keras_deeplab.training.Trainer.fit`).

    Raises:
        ConfigError: invalid configuration (every problem listed).
        NonFiniteLossError: the loss diverged (the last good checkpoint is kept).

    Example:
        ```python
        result = train_from_config("configs/shapes_demo.yaml", ["train.steps=50"])
        print(result.step, result.metrics)
        ```
    """
    if isinstance(config, (str, Path)):
        from keras_deeplab.configs import recipe_path

        config = recipe_path(config)  # a file, or a shipped recipe name such as "shapes_demo"
    config = load_config(config, overrides)
    strategy = strategy or make_strategy(
        config.train.strategy,
        communication=config.train.communication,
        cpu_replicas=config.train.cpu_replicas,
    )
    if cpu_split(strategy):
        threads = tf.config.threading.get_intra_op_parallelism_threads()
        print(f"{strategy.num_replicas_in_sync} CPU replicas, {threads} thread(s) each")
    keras.utils.set_random_seed(config.train.seed)
    data = _data_module()
    source = load_source(config.data, config.data.split)
    eval_source = (
        load_source(config.data, config.data.eval_split, evaluation=True)
        if config.data.eval_split
        else None
    )

    for data_source in (source, eval_source):  # before any step: not an assertion mid-epoch
        if data_source is not None:
            check_labels(config.loss, data_source, config.model.num_classes)
    model = dataclasses.replace(
        config.model, num_classes=config.model.num_classes or source.num_classes
    )
    loss = config.loss
    if loss.ignore_label is None:
        loss = dataclasses.replace(loss, ignore_label=source.ignore_label)
    if loss.class_weights == "median_frequency":  # recorded in the run's config.yaml
        loss = dataclasses.replace(loss, class_weights=_median_frequency(source, model.num_classes))
    train = config.train
    if train.steps_per_epoch is None:
        per_epoch = data.steps_per_epoch(source, train.batch_size)
        if not per_epoch:
            raise ValueError(
                f"{source.name}: the number of examples is unknown or smaller than the batch "
                f"size {train.batch_size}; set train.steps_per_epoch."
            )
        train = dataclasses.replace(train, steps_per_epoch=per_epoch)
    config = dataclasses.replace(config, model=model, loss=loss, train=train)
    cfg_data = config.data

    pipeline_kwargs = dict(
        crop_size=cfg_data.crop_size,
        min_scale=cfg_data.min_scale,
        max_scale=cfg_data.max_scale,
        scale_step=cfg_data.scale_step,
        flip=cfg_data.flip,
        rotate90=cfg_data.rotate90,
    )
    if "shard" in inspect.signature(data.train_pipeline).parameters:

        def train_data(seed, skip_batches=0, shard=None):  # each worker decodes its share
            return data.train_pipeline(
                source,
                train.batch_size,
                seed=seed,
                skip_batches=skip_batches,
                shard=shard,
                **pipeline_kwargs,
            )

    else:

        def train_data(seed, skip_batches=0):
            return data.train_pipeline(
                source, train.batch_size, seed=seed, skip_batches=skip_batches, **pipeline_kwargs
            )

    trainer = Trainer(model_builder(model), config, strategy=strategy)
    eval_data = None
    if eval_source is not None:
        eval_data = data.eval_pipeline(
            eval_source,
            eval_batch_size(cfg_data.eval_batch_size, strategy.num_replicas_in_sync),
            output_stride=trainer.model.output_stride,
        )
    run_dir = config.checkpoint.dir
    if trainer.is_chief:  # how eval/predict/export rebuild the model (`load_run`)
        spec_step = None
        if (Path(run_dir) / run_files.MODEL_FILE).is_file():
            spec_step = run_files.read_model_spec(run_dir).get("weights_step")
        run_files.write_model_spec(
            run_dir, model.name, build_kwargs(model), source.class_names, spec_step
        )
    result = trainer.fit(train_data, eval_data)
    if trainer.is_chief:
        run_files.write_final_weights(run_dir, result.model, result.step)
    return result


__all__ = [
    "TrainConfig",
    "build_kwargs",
    "eval_batch_size",
    "load_source",
    "model_builder",
    "train_from_config",
]
