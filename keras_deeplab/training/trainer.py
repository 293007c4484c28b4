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

from keras_deeplab.evaluation.metrics import ConfusionMatrix, batch_confusion_matrix
from keras_deeplab.training.batchnorm import batch_norm_mode
from keras_deeplab.training.checkpoint import TrainingCheckpoint
from keras_deeplab.training.config import TrainConfig, load_config
from keras_deeplab.training.distribute import task_info
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

    def summary(self):
        """Human-readable lines for the command line."""
        lines = [
            f"trained to step {self.step} (epoch {self.epoch}) in {self.elapsed:.1f}s"
            + (f", resumed from {self.resumed_from}" if self.resumed_from else "")
        ]
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


def mixed_precision_policy(mode):
    """Keras dtype policy name for `train.mixed_precision` (None: full float32)."""
    if mode in (None, False, "none"):
        return None
    if mode == "auto":
        mode = "float16" if tf.config.list_logical_devices("GPU") else "bfloat16"
    if mode not in ("bfloat16", "float16"):
        raise ValueError(f"mixed_precision must be none, auto, bfloat16 or float16; got {mode!r}.")
    return f"mixed_{mode}"


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


def _epoch_datasets(train_data):
    """`(seed, skip_batches) -> Dataset` from a dataset or a `seed[, skip_batches]` function."""
    if isinstance(train_data, tf.data.Dataset):
        return lambda _seed, skip: train_data.skip(skip) if skip else train_data
    if not callable(train_data):
        raise TypeError(
            f"train_data must be a tf.data.Dataset or a function seed -> Dataset; got {type(train_data)}."
        )
    if "skip_batches" in inspect.signature(train_data).parameters:
        return lambda seed, skip: train_data(seed, skip_batches=skip)
    return lambda seed, skip: train_data(seed).skip(skip) if skip else train_data(seed)


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
            returning one (built in the scope, under the mixed-precision policy of
            `config.train.mixed_precision`).
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
        self.strategy = strategy or tf.distribute.get_strategy()
        self.task_type, self.task_id, self.is_chief = task_info(self.strategy)
        policy = mixed_precision_policy(cfg.train.mixed_precision)
        with self.strategy.scope():
            if isinstance(model, keras.Model):
                self.model = model
                if policy is not None and model.dtype_policy.name != policy:
                    warnings.warn(
                        f"train.mixed_precision={cfg.train.mixed_precision!r} is ignored for an "
                        "already built model; pass a function that builds it.",
                        stacklevel=2,
                    )
            else:
                self.model = build_with_policy(model, policy)
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

    # ------------------------------------------------------------------ setup

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
            grads = tape.gradient(loss, variables)
            grads = [
                g if g is None or m == 1.0 else g * m
                for g, m in zip(grads, multipliers, strict=True)
            ]
            optimizer.apply(grads, variables)
            return data_loss, decay

        @tf.function
        def train_step(batch, step):
            images, masks = batch
            data_loss, decay = strategy.run(replica_step, args=(images, masks, step))
            return (
                strategy.reduce(SUM, data_loss, axis=None),
                strategy.reduce(SUM, decay, axis=None),
            )

        return train_step

    def _build_eval_step(self):
        model, strategy = self.model, self.strategy
        ignore_label = self._loss_kwargs()["ignore_label"]

        def replica_eval(images, masks):
            logits = _logits(model(match_channels(images, model), training=False))
            masks = centre_crop_like(masks, logits)
            return batch_confusion_matrix(masks, logits, logits.shape[-1], ignore_label)

        @tf.function(reduce_retracing=True)
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

    def _diverged(self, loss, step, epoch):
        latest = self.checkpoint.latest
        kept = (
            f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"Training stopped: the loss is {loss} at step {step} (epoch {epoch + 1}). The diverged "
            f"weights were not saved; {kept}. Lower optimizer.learning_rate, check that mask values "
            "are < num_classes or the ignore label, or disable mixed precision."
        )

    def fit(self, train_data, eval_data=None):
        """Trains until `config.train.steps`, resuming from the run directory's latest checkpoint.

        Args:
            train_data: batched `(images float32 [B, h, w, 3] in 0..255, masks int32
                [B, h, w])` with the *global* batch size: a `tf.data.Dataset`
                (iterated once per epoch), or a function `seed -> Dataset` called
                with each epoch's data seed (`epoch_seed(seed, epoch)`), which makes
                the data order reproducible across restarts. If the function takes a
                `skip_batches` keyword it is passed the batches to skip on resume
                (e.g. `keras_deeplab.data.train_pipeline`), else `.skip()` is used.
            eval_data: optional batched dataset for mIoU at epoch ends.

        Returns:
            `TrainResult`.

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (nothing is saved).
        """
        cfg = self.config
        start = time.perf_counter()
        resumed = self.checkpoint.restore()
        step = int(self.checkpoint.step.numpy()) if resumed else 0
        seed = int(self.checkpoint.seed.numpy()) if resumed else cfg.train.seed
        if resumed and seed != cfg.train.seed:
            warnings.warn(
                f"Resuming {resumed} with its data seed {seed} (train.seed is {cfg.train.seed}).",
                stacklevel=2,
            )
        dataset_fn = _epoch_datasets(train_data)
        steps_per_epoch = self._steps_per_epoch(dataset_fn(epoch_seed(seed, 0), 0))
        saved_spe = int(self.checkpoint.steps_per_epoch.numpy()) if resumed else 0
        if saved_spe and saved_spe != steps_per_epoch:
            warnings.warn(
                f"The checkpoint was trained with {saved_spe} steps per epoch (now "
                f"{steps_per_epoch}); keeping {saved_spe} so the data order is restored.",
                stacklevel=2,
            )
            steps_per_epoch = saved_spe
        total = cfg.train.steps
        if resumed and self.is_chief and cfg.train.verbose:
            print(f"Resuming from {resumed} (step {step} of {total}).")
        if self.is_chief:
            Path(cfg.checkpoint.dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.checkpoint.dir) / "config.yaml").write_text(cfg.to_yaml())
        writer = SummaryWriter(self.log_dir)
        preview = self._preview(
            eval_data if eval_data is not None else dataset_fn(epoch_seed(seed, 0), 0)
        )
        history, metrics, last_loss = [], None, None
        verbose = cfg.train.verbose if self.is_chief else 0

        def save():
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
                    dataset = dataset_fn(epoch_seed(seed, epoch), done).take(count)
                    batches = self.strategy.experimental_distribute_dataset(_shard_by_data(dataset))
                    if verbose:
                        print(f"Epoch {epoch + 1}/{math.ceil(total / steps_per_epoch)}")
                    progbar = keras.utils.Progbar(
                        steps_per_epoch, verbose=verbose, stateful_metrics=["lr"]
                    )
                    if done:
                        progbar.update(done)
                    ran, losses = 0, []
                    for batch in batches:
                        lr = float(self.schedule(self.optimizer.iterations))
                        loss, decay = self._train_step(batch, tf.constant(step, tf.int64))
                        loss = float(loss + decay)
                        if not math.isfinite(loss):
                            self._diverged(loss, step + 1, epoch)
                        step, ran, last_loss = step + 1, ran + 1, loss
                        losses.append(loss)
                        progbar.update(done + ran, [("loss", loss), ("lr", lr)])
                        if step % cfg.train.summary_every_steps == 0:
                            writer.scalars(
                                step,
                                {
                                    "train/loss": loss,
                                    "train/learning_rate": lr,
                                    "train/weight_decay_loss": float(decay),
                                },
                            )
                        if step % cfg.checkpoint.every_steps == 0:
                            save()
                    if ran < count:
                        raise ValueError(
                            f"The training data ended after {done + ran} batches in epoch "
                            f"{epoch + 1}, but an epoch is {steps_per_epoch} steps; set "
                            "train.steps_per_epoch to at most the batches per epoch (or repeat the data)."
                        )
                    if step % steps_per_epoch and step < total:
                        continue
                    record = {
                        "epoch": epoch + 1,
                        "step": step,
                        "loss": float(np.mean(losses)),
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
        )
