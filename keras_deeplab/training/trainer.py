"""The DeepLab trainer: one custom training loop for every `tf.distribute` strategy.

The step is a `tf.function` around `strategy.run(replica_step)` reduced with
`strategy.reduce`, identical for the default strategy (one device),
`MirroredStrategy` (local GPUs or logical CPUs) and `MultiWorkerMirroredStrategy`
(Keras' `fit` fails under the latter, keras-team/keras#20585). Each replica
normalises its loss by the *global* number of valid pixels (an all-reduce of the
counts) and the optimizer sums the replicas' gradients, so a global batch gives
the same update however it is split (with frozen or synchronised BatchNorm).

Per step: forward in training mode (BatchNorm per `fine_tune_batch_norm`, see
`training.batchnorm`), cross-entropy terms (`training.losses`, MSC outputs summed),
L2 weight decay, gradients scaled per variable group (`training.optim`), optimizer
update (loss-scaled for float16). Per epoch: a Keras progress bar, TensorBoard
scalars (loss, learning rate, weight decay, mIoU) and prediction overlays,
evaluation and a checkpoint. Checkpoints (`training.checkpoint`) are also written
every `checkpoint.every_steps`; a run restarted with the same configuration
resumes from the latest one, restoring weights, optimizer state (hence the
learning-rate position), the step counter and the data order (per-epoch data
seeds, and the batches already consumed in the interrupted epoch are skipped).
A NaN/Inf loss stops the run with `NonFiniteLossError` without saving.

Several replicas (issue 18):
* float16: every replica reports whether its gradients are finite and one scalar
  all-reduce makes the verdict global; a step with an overflow on *any* replica or worker is
  skipped everywhere and the loss scale halves (Keras' `LossScaleOptimizer` alone decides
  from replica 0's local gradients under `MirroredStrategy`).
* Non-finite losses are recorded on the device at the step they happen (no host sync per
  step); the host reads the record every `summary_every_steps`, at every checkpoint and at
  every epoch end, so a diverged step is reported with its number and never saved.
* BatchNorm moving statistics stay identical on every replica (`training.batchnorm`).
* The global batch must give every replica at least one image (error), and should divide
  evenly (warning).
* Input: a `train_data` function taking a `shard` keyword (`keras_deeplab.data.train_pipeline`)
  is called once per input pipeline (worker) through `distribute_datasets_from_function`
  with `shard=(num_pipelines, pipeline_index)` and returns that worker's share of each
  global batch, decoded there only; other inputs are split after batching (every worker
  reads whole global batches).
* Dropout draws different masks on each replica (replica 0 keeps the one-device stream).
* Multi-worker resume: every worker must restore the same step (the checkpoint directory
  must be shared by all workers), else a `ValueError` says so.
"""

import dataclasses
import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab._progress import keras_bar_mode
from keras_deeplab.evaluation.metrics import ConfusionMatrix, batch_confusion_matrix
from keras_deeplab.precision import (
    describe_choice,
    dtype_policy,
    native_reason,
    resolve_precision,
    training_fallback,
)
from keras_deeplab.training.batchnorm import (
    average_moving_statistics,
    batch_norm_layers,
    batch_norm_mode,
)
from keras_deeplab.training.checkpoint import TrainingCheckpoint
from keras_deeplab.training.config import TrainConfig, load_config
from keras_deeplab.training.distribute import cpu_split, task_info
from keras_deeplab.training.losses import (
    centre_crop_like,
    loss_terms,
    regularized_weights,
    weight_decay_loss,
)
from keras_deeplab.training.optim import (
    build_optimizer,
    default_weight_decay,
    gradient_multipliers,
)
from keras_deeplab.training.schedules import build_schedule
from keras_deeplab.training.summaries import SummaryWriter, overlay_grid

SUM = tf.distribute.ReduceOp.SUM


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    """What `Trainer.fit` returns.

    Attributes:
        model: the trained model.
        step: steps done (including those of resumed runs).
        epoch: epochs completed.
        loss: loss of the last step (None if no step ran).
        history: one dict per epoch ended in this run (`epoch`, `step`, `loss` mean,
            `learning_rate`, `elapsed` wall-clock seconds since `fit` started, measured
            before this epoch's evaluation, and `miou`/`pixel_accuracy` when evaluated).
        checkpoint: latest checkpoint path.
        resumed_from: checkpoint this run started from (None: fresh start).
        log_dir: TensorBoard directory (None when disabled or not the chief).
        elapsed: seconds spent in `fit`.
        metrics: last evaluation (`miou`, `pixel_accuracy`, `mean_accuracy`,
            `per_class_iou`; `keras_deeplab.evaluation.metrics`) or None.
        precision: the precision trained in (`"float32"`, `"bfloat16"` or `"float16"`).
        precision_choice: how it was chosen, e.g. "precision auto -> bfloat16 (CPU has amx_bf16)".
    """

    model: Any
    step: int
    epoch: int
    loss: float | None
    history: list
    checkpoint: str | None
    resumed_from: str | None
    log_dir: str | None
    elapsed: float
    metrics: dict | None = None
    precision: str = "float32"
    precision_choice: str | None = None

    def summary(self):
        """Human-readable lines for the command line."""
        lines = [
            f"trained to step {self.step} (epoch {self.epoch}) in {self.elapsed:.1f}s"
            + (f", resumed from {self.resumed_from}" if self.resumed_from else "")
        ]
        if self.precision_choice:
            lines.append(self.precision_choice)
        if self.loss is not None:
            lines.append(f"final loss: {self.loss:.4f}")
        if self.metrics:
            lines.append(
                f"eval: mIoU {self.metrics['miou']:.4f}, "
                f"pixel accuracy {self.metrics['pixel_accuracy']:.4f}"
            )
        lines.append(f"checkpoint: {self.checkpoint}")
        if self.log_dir:
            lines.append(f"TensorBoard logs: {self.log_dir}")
        return "\n".join(lines)


_POLICY_PRECISIONS = {
    "mixed_float16": "float16",
    "float16": "float16",
    "mixed_bfloat16": "bfloat16",
    "bfloat16": "bfloat16",
}


def model_precision(model):
    """The precision a built model computes in: "float32", "bfloat16" or "float16"."""
    return _POLICY_PRECISIONS.get(model.dtype_policy.name, "float32")


def build_with_policy(model_fn, policy):
    """Calls `model_fn()` with the global Keras dtype policy set to `policy` (then restores it)."""
    if policy is None:
        return model_fn()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return model_fn()
    finally:
        keras.config.set_dtype_policy(previous)


def epoch_seed(seed, epoch):
    """Data seed of `epoch` (deterministic, distinct per epoch and base seed)."""
    return int((int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1))


def _shard_by_data(dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def without_autotune_thread(dataset):
    """`dataset` with tf.data's autotuning model thread off (for iterators made per epoch).

    Deleting an iterator while its autotune thread waits out an optimisation period blocked
    the training loop for 6-16 s at many epoch ends, at random (TF 2.21, 2-core Zen 4 EPYC;
    the main thread in `RootDataset::Iterator::~Iterator`, seen with py-spy). With autotuning
    off, `AUTOTUNE` parallelism is the CPU thread pool's size and `prefetch(AUTOTUNE)` grows
    its buffer when it runs dry: the demo's steps stayed as fast (4 epochs, same loss values:
    157 s of training with the thread, 119 s without, 117 and 114 s of them in the epochs'
    steps), and the whole demo trained in 413 s instead of 547 (one run each).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _epoch_datasets(train_data):
    """`((seed, skip_batches, shard=None) -> Dataset, shardable)` from a dataset or a
    `seed[, skip_batches][, shard]` function (`shardable`: it takes `shard`)."""
    if isinstance(train_data, tf.data.Dataset):
        return (
            lambda _seed, skip, shard=None: train_data.skip(skip) if skip else train_data
        ), False
    if not callable(train_data):
        raise TypeError(
            f"train_data must be a tf.data.Dataset or a function seed -> Dataset; got {type(train_data)}."
        )
    parameters = inspect.signature(train_data).parameters
    takes_skip, takes_shard = "skip_batches" in parameters, "shard" in parameters

    def dataset_fn(seed, skip, shard=None):
        kwargs = {"shard": shard} if takes_shard and shard is not None else {}
        if takes_skip:
            return train_data(seed, skip_batches=skip, **kwargs)
        data = train_data(seed, **kwargs)
        return data.skip(skip) if skip else data

    return dataset_fn, takes_shard


def _batch_dim(dataset):
    """The static batch size of a batched `(images, masks)` dataset, or None."""
    spec = dataset.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    shape = getattr(spec, "shape", None)
    return shape[0] if shape is not None and shape.rank else None


def _global_finiteness(grads, context):
    """Gradients whose local finiteness is the all-replica verdict.

    One scalar all-reduce counts the replicas with a NaN/Inf gradient; if any has one, every
    replica's first gradient is made NaN, so `LossScaleOptimizer` (which decides from replica
    0's local gradients) skips the step and halves the loss scale on every replica and worker.
    """
    dense = [
        i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)
    ]
    if not dense:
        return grads
    local = tf.reduce_all(
        [
            tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
            for g in grads
            if g is not None
        ]
    )
    nonfinite = context.all_reduce(SUM, tf.cast(tf.logical_not(local), tf.float32))
    first = grads[dense[0]]
    poison = tf.where(nonfinite > 0, tf.constant(np.nan, first.dtype), tf.zeros([], first.dtype))
    return [first + poison if i == dense[0] else g for i, g in enumerate(grads)]


def _clip_global_norm(grads, clip_norm, context, loss_scaler=None):
    """`grads` scaled so that their sum over replicas has global L2 norm <= `clip_norm`.

    With several replicas the gradients are summed once more here (the optimizer sums them
    again when it applies them) so that every replica scales by the norm of the applied
    gradient, not of its own share. A loss-scaled gradient is measured unscaled.
    """
    present = [i for i, g in enumerate(grads) if g is not None]
    dense = [tf.convert_to_tensor(grads[i]) for i in present]
    total = context.all_reduce(SUM, dense) if context.num_replicas_in_sync > 1 else dense
    norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in total])
    if loss_scaler is not None:
        norm = norm / tf.cast(loss_scaler.dynamic_scale, tf.float32)
    factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))  # NaN norm stays NaN
    clipped = list(grads)
    for i, g in zip(present, dense, strict=True):
        clipped[i] = g * tf.cast(factor, g.dtype)
    return clipped


def match_channels(images, model):
    """RGB batches as a 1-channel model's input (their luma); others unchanged."""
    if model.input_shape[-1] == 1 and images.shape[-1] == 3:
        return tf.image.rgb_to_grayscale(images)
    return images


def _logits(outputs):
    """The main logits of a training output (MSC's `"fused"`, or `"logits"` beside the
    auxiliary heads' outputs)."""
    if not isinstance(outputs, dict):
        return outputs
    return outputs["fused"] if "fused" in outputs else outputs["logits"]


class Trainer:
    """Trains a segmentation model with the official DeepLab recipe.

    Args:
        model: a Keras model built inside `strategy.scope()`, or a function
            returning one (built in the scope, under the dtype policy of
            `config.train.precision`; a built model keeps its own policy).
        config: `TrainConfig` (or a mapping/path for `load_config`); the `loss`,
            `optimizer`, `schedule`, `train` and `checkpoint` sections are used.
        strategy: a `tf.distribute.Strategy` (default: the current one).
        backbone: backbone name for the default weight decay (default: the model's
            `backbone_name`; 4e-5 for models without one).

    Example:
        ```python
        trainer = Trainer(lambda: create_model("deeplabv3_mobilenetv2_dm05", num_classes=3),
                          TrainConfig(train=TrainLoopConfig(steps=100, batch_size=8)))
        result = trainer.fit(lambda seed: make_batches(seed), eval_data=val_batches)
        ```
    """

    def __init__(self, model, config=None, strategy=None, backbone=None):
        self.config = config if isinstance(config, TrainConfig) else load_config(config)
        cfg = self.config
        if cfg.train.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = strategy or tf.distribute.get_strategy()
        self.task_type, self.task_id, self.is_chief = task_info(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._check_batch(cfg.train.batch_size, "train.batch_size")
        requested = cfg.train.precision
        with self.strategy.scope():
            if isinstance(model, keras.Model):
                self.model = model
                self.precision = model_precision(model)
                self.precision_choice = (
                    f"precision {self.precision} (the model's dtype policy "
                    f"{model.dtype_policy.name})"
                )
                if requested not in ("float32", self.precision):
                    warnings.warn(
                        f"train.precision={requested!r} is ignored for an already built model "
                        f"(it computes in {self.precision}); pass a function that builds it.",
                        stacklevel=2,
                    )
            else:
                self.precision = resolve_precision(requested, "training")
                self.precision_choice = describe_choice(requested, "training")
                if requested == "auto" and self.precision == "bfloat16":
                    self.model = self._build_auto(model)
                else:
                    self.model = build_with_policy(model, dtype_policy(self.precision))
        self._check_scope()
        self.compute_dtype = self.model.dtype_policy.compute_dtype
        self.schedule = build_schedule(cfg.schedule, cfg.optimizer.learning_rate, cfg.train.steps)

        weight_decay = cfg.optimizer.weight_decay
        if weight_decay is None:
            backbone = backbone or getattr(self.model, "backbone_name", None)
            weight_decay = default_weight_decay(backbone) if backbone else 4e-5
        self.weight_decay = float(weight_decay)
        factors = gradient_multipliers(
            self.model,
            self.model.trainable_variables,
            last_layers=cfg.optimizer.last_layers,
            last_layer_multiplier=cfg.optimizer.last_layer_multiplier,
            bias_multiplier=cfg.optimizer.bias_multiplier,
            batch_norm_multiplier=cfg.optimizer.batch_norm_multiplier,
        )
        pairs = [(v, f) for v, f in zip(self.model.trainable_variables, factors, strict=True) if f]
        if not pairs:
            raise ValueError("No variable to train: every gradient multiplier is 0.")
        self.variables = [v for v, _ in pairs]
        self.multipliers = [f for _, f in pairs]
        trained = {id(v) for v in self.variables}
        self.regularized = [
            v
            for v in regularized_weights(self.model, cfg.optimizer.regularize_depthwise)
            if id(v) in trained
        ]
        with self.strategy.scope():
            self.optimizer = build_optimizer(cfg.optimizer, self.schedule, self.compute_dtype)
            self.optimizer.build(self.variables)
        self.checkpoint = TrainingCheckpoint(
            cfg.checkpoint.dir,
            self.model,
            self.optimizer,
            max_to_keep=cfg.checkpoint.max_to_keep,
            is_chief=self.is_chief,
            task_id=self.task_id,
        )
        log_dir = cfg.checkpoint.log_dir or str(Path(cfg.checkpoint.dir) / "logs")
        self.log_dir = log_dir if (cfg.checkpoint.tensorboard and self.is_chief) else None
        self._train_step = None
        self._eval_step = None
        # First non-finite step (1-based, -1: none) and its loss, written by the train step.
        self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="bad_step")
        self._bad_loss = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="bad_loss")
        weights = {id(v) for v in self.model.weights}
        self._seed_states = [  # the dropout layers' `SeedGenerator` states ([seed, counter])
            v
            for v in self.model.variables
            if id(v) not in weights and v.name == "seed_generator_state" and v.shape == (2,)
        ]

    @property
    def loss_scale(self):
        """The current float16 loss scale (None without loss scaling)."""
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return float(self.optimizer.dynamic_scale.numpy())
        return None

    # ------------------------------------------------------------------ setup

    def _check_batch(self, batch, what):
        """Error when `batch` gives a replica no image; warning when it does not divide."""
        replicas = self.replicas
        if batch is None or replicas == 1:
            return
        if batch < replicas:
            raise ValueError(
                f"{what}={batch} is smaller than the {replicas} replicas training in sync: "
                "some replicas would get no image (an empty batch gives NaN BatchNorm "
                f"statistics). Set {what} to at least {replicas}, ideally a multiple of it."
            )
        if batch % replicas:
            warnings.warn(
                f"{what}={batch} does not divide over {replicas} replicas: they get unequal "
                f"shares (and the input is split after batching). Use a multiple of {replicas}.",
                stacklevel=3,
            )

    def _build_auto(self, build):
        """The model `train.precision="auto"` trains when it resolved to bfloat16.

        The first build is in float32: on a bf16 CPU where this model's training is no faster
        in bf16 (`training_fallback`) it is the model, exactly what `float32` would train. Else a
        bf16 build takes over its variables (initial weights and dropout seeds; a second build
        draws others), exactly what `bfloat16` would train.
        """
        first = build_with_policy(build, None)
        reason = training_fallback(first)
        if reason:
            self.precision = "float32"
            self.precision_choice = f"precision auto -> float32 ({native_reason()}, but {reason})"
            return first
        reduced = build_with_policy(build, dtype_policy("bfloat16"))
        for target, source in zip(reduced.variables, first.variables, strict=True):
            target.assign(source)
        return reduced

    def _check_scope(self):
        if self.strategy.num_replicas_in_sync == 1 and not isinstance(
            self.strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return
        variable = self.model.weights[0].value if self.model.weights else None
        if variable is not None and not self.strategy.extended.variable_created_in_scope(variable):
            raise ValueError(
                "The model was not built inside strategy.scope(); pass a function that builds it "
                "(Trainer(lambda: create_model(...), ...)) so the trainer builds it in the scope."
            )

    @property
    def sync_batch_norm(self):
        train = self.config.train
        return bool(
            train.fine_tune_batch_norm
            and train.sync_batch_norm
            and self.strategy.num_replicas_in_sync > 1
        )

    def _loss_kwargs(self):
        loss = self.config.loss
        return {
            "ignore_label": 255 if loss.ignore_label is None else loss.ignore_label,
            "class_weights": loss.class_weights,
            "top_k_percent_pixels": loss.top_k_percent_pixels,
            "hard_example_mining_step": loss.hard_example_mining_step,
        }

    def _build_train_step(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        variables, multipliers = self.variables, self.multipliers
        regularized, weight_decay = self.regularized, self.weight_decay
        replicas = strategy.num_replicas_in_sync
        loss_kwargs = {
            **self._loss_kwargs(),
            "output_weights": getattr(model, "auxiliary_loss_weights", None),
        }
        scale_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        train = self.config.train
        average_bn = (
            batch_norm_layers(model)
            if (train.fine_tune_batch_norm and not self.sync_batch_norm and replicas > 1)
            else []
        )
        bad_step, bad_loss = self._bad_step, self._bad_loss
        clip_norm = self.config.optimizer.global_clipnorm

        def replica_step(images, masks, step):
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                outputs = model(match_channels(images, model), training=True)
                terms = loss_terms(masks, outputs, step=step, **loss_kwargs)
                counts = context.all_reduce(SUM, [tf.stop_gradient(c) for _, c in terms])
                data_loss = tf.add_n(
                    [tf.math.divide_no_nan(t, c) for (t, _), c in zip(terms, counts, strict=True)]
                )
                decay = weight_decay_loss(regularized, weight_decay) / replicas
                loss = data_loss + decay
                if scale_loss:
                    loss = optimizer.scale_loss(loss)
            # Fine-tuned BN without synchronisation: every replica keeps the same statistics.
            average_moving_statistics(average_bn)
            grads = tape.gradient(loss, variables)
            grads = [
                g if g is None or m == 1.0 else g * m
                for g, m in zip(grads, multipliers, strict=True)
            ]
            if scale_loss:
                grads = _global_finiteness(grads, context)
            if clip_norm:
                grads = _clip_global_norm(
                    grads, clip_norm, context, optimizer if scale_loss else None
                )
            optimizer.apply(grads, variables)
            return data_loss, decay

        @tf.function(autograph=False)
        def train_step(batch, step):
            images, masks = batch
            data_loss, decay = strategy.run(replica_step, args=(images, masks, step))
            decay = strategy.reduce(SUM, decay, axis=None)
            total = strategy.reduce(SUM, data_loss, axis=None) + decay
            first = tf.logical_and(tf.logical_not(tf.math.is_finite(total)), bad_step < 0)
            bad_step.assign(tf.where(first, step + 1, bad_step))
            bad_loss.assign(tf.where(first, total, bad_loss))
            return total, decay

        return train_step

    @tf.function(autograph=False)
    def _spread_seeds(self):
        """Replica r's dropout seeds = replica 0's + r * 1000003 (replica 0 keeps its stream)."""
        states = self._seed_states

        def spread():
            context = tf.distribute.get_replica_context()
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            for state in states:
                value = tf.cast(state.value, tf.int64)
                first = context.all_reduce(SUM, tf.where(replica == 0, value, tf.zeros_like(value)))
                offset = tf.stack([replica * 1_000_003, tf.constant(0, tf.int64)])
                state.value.assign(tf.cast(first + offset, state.dtype))

        self.strategy.run(spread)

    @tf.function(autograph=False)
    def _gather_steps(self, step):
        def gather():
            context = tf.distribute.get_replica_context()
            return context.all_gather(tf.reshape(step, [1]), axis=0)

        return self.strategy.run(gather)

    def _check_restored(self, step, resumed):
        """Multi-worker: every worker restored the same step (a shared checkpoint directory)."""
        if not self.multi_worker:
            return
        gathered = self._gather_steps(tf.constant(step, tf.int64))
        steps = np.asarray(self.strategy.experimental_local_results(gathered)[0]).tolist()
        if len(set(steps)) > 1:
            raise ValueError(
                f"The workers restored different training states (step per replica: {steps}); "
                f"this worker (task {self.task_type}:{self.task_id}) restored "
                f"{resumed or 'nothing'} from {self.checkpoint.directory}. checkpoint.dir must be "
                "one directory every worker reads and the chief writes (a shared or network "
                "filesystem, or a gs:// bucket): point all workers at the same shared path, or "
                "delete the stale checkpoints."
            )

    def _build_eval_step(self):
        model, strategy = self.model, self.strategy
        ignore_label = self._loss_kwargs()["ignore_label"]

        def replica_eval(images, masks):
            logits = _logits(model(match_channels(images, model), training=False))
            masks = centre_crop_like(masks, logits)
            return batch_confusion_matrix(masks, logits, logits.shape[-1], ignore_label)

        @tf.function(reduce_retracing=True, autograph=False)
        def eval_step(batch):
            images, masks = batch
            return strategy.reduce(SUM, strategy.run(replica_eval, args=(images, masks)), axis=None)

        return eval_step

    # ------------------------------------------------------------- evaluation

    def evaluate(self, eval_data):
        """Streaming mIoU over a batched `(images, masks)` dataset, on all replicas."""
        if self._eval_step is None:
            self._eval_step = self._build_eval_step()
        total = None
        eval_data = without_autotune_thread(eval_data)
        for batch in self.strategy.experimental_distribute_dataset(_shard_by_data(eval_data)):
            matrix = self._eval_step(batch).numpy()
            total = matrix if total is None else total + matrix
        if total is None:
            raise ValueError("The evaluation data produced no batches.")
        scores = (
            ConfusionMatrix(total.shape[0], self._loss_kwargs()["ignore_label"])
            .update_confusion(total)
            .result()
        )
        return {
            "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "mean_accuracy": scores["mean_accuracy"],
            "per_class_iou": [float(x) for x in scores["per_class_iou"]],
        }

    def _write_images(self, writer, step, preview):
        if preview is None or writer.log_dir is None:
            return
        images, masks = preview
        logits = _logits(self.model(match_channels(images, self.model), training=False))
        predictions = np.argmax(np.asarray(logits, np.float32), axis=-1)
        images, masks = centre_crop_like(images, logits), centre_crop_like(masks, logits)
        grid = overlay_grid(
            np.asarray(images), np.asarray(masks), predictions, self._loss_kwargs()["ignore_label"]
        )
        writer.images(step, "predictions/image_truth_prediction", grid)

    def _preview(self, dataset):
        if self.log_dir is None or self.config.train.num_summary_images < 1:
            return None
        count = self.config.train.num_summary_images
        for images, masks in dataset.take(1):
            return images[:count], masks[:count]
        return None

    # --------------------------------------------------------------- training

    def _steps_per_epoch(self, dataset):
        if self.config.train.steps_per_epoch:
            return self.config.train.steps_per_epoch
        cardinality = int(dataset.cardinality())
        if cardinality > 0:
            return cardinality
        raise ValueError(
            "Cannot tell how many batches make an epoch (the training dataset is infinite or of "
            "unknown size); set train.steps_per_epoch."
        )

    def _diverged(self, loss, step):
        latest = self.checkpoint.latest
        kept = (
            f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        )
        epoch = (step - 1) // max(getattr(self, "_steps_per_epoch_now", 1), 1)
        raise NonFiniteLossError(
            f"Training stopped: the loss is {loss} at step {step} (epoch {epoch + 1}). The diverged "
            f"weights were not saved; {kept}. Lower optimizer.learning_rate, check that mask values "
            "are < num_classes or the ignore label, or train in precision float32."
        )

    def _batches(self, dataset_fn, shardable, seed, done, count):
        """This epoch's `count` batches, distributed over the replicas."""

        def epoch_data(*shard):
            return without_autotune_thread(dataset_fn(seed, done, *shard).take(count))

        if self.replicas == 1 and not self.multi_worker:
            return epoch_data()
        batch = self.config.train.batch_size
        if shardable and batch % self.replicas == 0:

            def pipeline(context):
                shard = (context.num_input_pipelines, context.input_pipeline_id)
                data = epoch_data(shard)
                local = self.replicas // context.num_input_pipelines
                if local > 1:  # this worker's share -> one batch per local replica
                    per_replica = context.get_per_replica_batch_size(batch)
                    data = data.unbatch().batch(per_replica, drop_remainder=True)
                return data

            return self.strategy.distribute_datasets_from_function(pipeline, self._input_options())
        if self.multi_worker and not self._warned_unsharded:
            self._warned_unsharded = True
            warnings.warn(
                "train_data takes no shard argument (or train.batch_size does not divide over "
                "the replicas): every worker reads and decodes whole global batches and keeps "
                "its part. keras_deeplab.data.train_pipeline shards before decoding.",
                stacklevel=3,
            )
        return self.strategy.experimental_distribute_dataset(_shard_by_data(epoch_data()))

    def _input_options(self):
        """One input pipeline per replica when the replicas are logical CPU devices.

        The default distributed input feeds CPU replicas through a `MultiDeviceIterator`, whose
        generator dataset keeps tf.data's autotune thread (see `without_autotune_thread`):
        epoch starts stalled for 1-14 s with the demo's two CPU replicas. Per-replica
        pipelines on the replica's own device do not (docs/training.md).
        """
        if not cpu_split(self.strategy):
            return None
        return tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
            experimental_place_dataset_on_device=True,
            experimental_fetch_to_device=False,
        )

    def _check_finite(self):
        """Raises `NonFiniteLossError` if a step recorded a NaN/Inf loss (one host read)."""
        bad = int(self._bad_step.numpy())
        if bad >= 0:
            self._diverged(float(self._bad_loss.numpy()), bad)

    def fit(self, train_data, eval_data=None):
        """Trains until `config.train.steps`, resuming from the run directory's latest checkpoint.

        Args:
            train_data: batched `(images float32 [B, h, w, 3] in 0..255, masks int32
                [B, h, w])` with the *global* batch size: a `tf.data.Dataset`
                (iterated once per epoch), or a function `seed -> Dataset` called
                with each epoch's data seed (`epoch_seed(seed, epoch)`), which makes
                the data order reproducible across restarts. If the function takes a
                `skip_batches` keyword it is passed the batches to skip on resume
                (e.g. `keras_deeplab.data.train_pipeline`), else `.skip()` is used. If it
                takes a `shard` keyword, several replicas call it once per input pipeline
                with `shard=(num_pipelines, index)` and it returns only that pipeline's
                share of every global batch (`batch_size // num_pipelines` examples each).
            eval_data: optional batched dataset for mIoU at epoch ends.

        Returns:
            `TrainResult`.

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (nothing is saved).
            ValueError: the batch gives a replica no image; multi-worker: the workers
                restored different checkpoints (the checkpoint directory is not shared).
        """
        cfg = self.config
        start = time.perf_counter()
        resumed = self.checkpoint.restore()
        step = int(self.checkpoint.step.numpy()) if resumed else 0
        self._check_restored(step, resumed)
        if self.replicas > 1 and self._seed_states:
            self._spread_seeds()
        self._bad_step.assign(-1)
        self._warned_unsharded = False
        seed = int(self.checkpoint.seed.numpy()) if resumed else cfg.train.seed
        if resumed and seed != cfg.train.seed:
            warnings.warn(
                f"Resuming {resumed} with its data seed {seed} (train.seed is {cfg.train.seed}).",
                stacklevel=2,
            )
        dataset_fn, shardable = _epoch_datasets(train_data)
        first_epoch = dataset_fn(epoch_seed(seed, 0), 0)
        batch = _batch_dim(first_epoch)
        if batch is None and self.replicas > 1:  # unknown static size: look at the first batch
            for images, _ in first_epoch.take(1):
                batch = int(images.shape[0])
        self._check_batch(batch, "the training batch size")
        steps_per_epoch = self._steps_per_epoch(first_epoch)
        saved_spe = int(self.checkpoint.steps_per_epoch.numpy()) if resumed else 0
        if saved_spe and saved_spe != steps_per_epoch:
            warnings.warn(
                f"The checkpoint was trained with {saved_spe} steps per epoch (now "
                f"{steps_per_epoch}); keeping {saved_spe} so the data order is restored.",
                stacklevel=2,
            )
            steps_per_epoch = saved_spe
        self._steps_per_epoch_now = steps_per_epoch
        total = cfg.train.steps
        verbose = cfg.train.verbose if self.is_chief else 0
        if verbose:
            print(self.precision_choice)
        if resumed and verbose:
            print(f"Resuming from {resumed} (step {step} of {total}).")
        if self.is_chief:
            Path(cfg.checkpoint.dir).mkdir(parents=True, exist_ok=True)
            record = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, precision=self.precision)
            )
            (Path(cfg.checkpoint.dir) / "config.yaml").write_text(
                f"# {self.precision_choice}\n{record.to_yaml()}"
            )
        writer = SummaryWriter(self.log_dir)
        preview = self._preview(eval_data if eval_data is not None else first_epoch)
        history, metrics, last_loss = [], None, None
        every_summary, every_save = cfg.train.summary_every_steps, cfg.checkpoint.every_steps

        def save():
            self._check_finite()  # never save the weights of a diverged step
            return self.checkpoint.save(step, step // steps_per_epoch, seed, steps_per_epoch)

        try:
            with batch_norm_mode(
                self.model,
                cfg.train.fine_tune_batch_norm,
                self.sync_batch_norm,
                cfg.train.batch_norm_momentum,
            ):
                if self._train_step is None:
                    self._train_step = self._build_train_step()
                while step < total:
                    epoch, done = divmod(step, steps_per_epoch)
                    count = min(steps_per_epoch - done, total - step)
                    batches = self._batches(
                        dataset_fn, shardable, epoch_seed(seed, epoch), done, count
                    )
                    if verbose:
                        print(f"Epoch {epoch + 1}/{math.ceil(total / steps_per_epoch)}")
                    progbar = keras.utils.Progbar(
                        steps_per_epoch, verbose=keras_bar_mode(verbose), stateful_metrics=["lr"]
                    )
                    if done:
                        progbar.update(done)
                    ran, losses = 0, []
                    for batch in batches:
                        loss, decay = self._train_step(batch, tf.constant(step, tf.int64))
                        step, ran = step + 1, ran + 1
                        losses.append(loss)  # read on the host only every summary/save
                        if step % every_summary and step % every_save:
                            progbar.update(done + ran)
                            continue
                        self._check_finite()
                        last_loss = float(loss)
                        lr = float(self.schedule(self.optimizer.iterations))
                        progbar.update(done + ran, [("loss", last_loss), ("lr", lr)])
                        if step % every_summary == 0:
                            writer.scalars(
                                step,
                                {
                                    "train/loss": last_loss,
                                    "train/learning_rate": lr,
                                    "train/weight_decay_loss": float(decay),
                                },
                            )
                        if step % every_save == 0:
                            save()
                    if ran < count:
                        raise ValueError(
                            f"The training data ended after {done + ran} batches in epoch "
                            f"{epoch + 1}, but an epoch is {steps_per_epoch} steps; set "
                            "train.steps_per_epoch to at most the batches per epoch (or repeat the data)."
                        )
                    self._check_finite()
                    last_loss = float(losses[-1])
                    if step % steps_per_epoch:
                        if step < total:
                            continue
                        progbar.update(done + ran, finalize=True)  # the run ends mid-epoch
                    record = {
                        "epoch": epoch + 1,
                        "step": step,
                        "loss": float(tf.reduce_mean(tf.stack(losses))),
                        "learning_rate": float(self.schedule(self.optimizer.iterations)),
                        "elapsed": time.perf_counter() - start,
                    }
                    every = cfg.train.eval_every_epochs
                    if eval_data is not None and ((epoch + 1) % every == 0 or step >= total):
                        metrics = self.evaluate(eval_data)
                        record.update(
                            miou=metrics["miou"], pixel_accuracy=metrics["pixel_accuracy"]
                        )
                        writer.scalars(
                            step,
                            {
                                "eval/miou": metrics["miou"],
                                "eval/pixel_accuracy": metrics["pixel_accuracy"],
                            },
                        )
                        if verbose:
                            print(
                                f"  eval: mIoU {metrics['miou']:.4f}, "
                                f"pixel accuracy {metrics['pixel_accuracy']:.4f}"
                            )
                    writer.scalars(step, {"epoch/loss": record["loss"]})
                    self._write_images(writer, step, preview)
                    save()
                    history.append(record)
            if metrics is None and eval_data is not None and not history:
                metrics = self.evaluate(eval_data)  # nothing left to train: still report
        finally:
            writer.close()
        epoch = step // steps_per_epoch
        return TrainResult(
            model=self.model,
            step=step,
            epoch=epoch,
            loss=last_loss,
            history=history,
            checkpoint=self.checkpoint.latest,
            resumed_from=resumed,
            log_dir=self.log_dir,
            elapsed=time.perf_counter() - start,
            metrics=metrics,
            precision=self.precision,
            precision_choice=self.precision_choice,
        )
