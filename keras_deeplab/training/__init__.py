"""Training: losses, schedules, optimizer, BatchNorm modes, the distributed trainer, configs.

Follows the official `research/deeplab/train.py` and `utils/train_utils.py`.
Entry points: `train_from_config(path_or_config, overrides)` (what
`keras-deeplab train` runs) and `Trainer(model_fn, config, strategy).fit(data)`.
"""

from keras_deeplab.training.batchnorm import batch_norm_layers, batch_norm_mode
from keras_deeplab.training.checkpoint import TrainingCheckpoint
from keras_deeplab.training.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    TrainLoopConfig,
    load_config,
)
from keras_deeplab.training.distribute import make_strategy, task_info
from keras_deeplab.training.losses import (
    cross_entropy_terms,
    loss_terms,
    pixel_losses,
    regularized_weights,
    segmentation_loss,
    weight_decay_loss,
)
from keras_deeplab.training.optim import (
    OFFICIAL_LAST_LAYERS,
    Adam,
    Momentum,
    default_weight_decay,
    gradient_multipliers,
)
from keras_deeplab.training.run import train_from_config
from keras_deeplab.training.run_dir import LoadedRun, load_run
from keras_deeplab.training.schedules import PolyDecay, StepDecay, build_schedule
from keras_deeplab.training.trainer import NonFiniteLossError, Trainer, TrainResult, epoch_seed

__all__ = [
    "OFFICIAL_LAST_LAYERS",
    "Adam",
    "LoadedRun",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "Momentum",
    "NonFiniteLossError",
    "OptimizerConfig",
    "PolyDecay",
    "ScheduleConfig",
    "StepDecay",
    "TrainConfig",
    "TrainLoopConfig",
    "TrainResult",
    "Trainer",
    "TrainingCheckpoint",
    "batch_norm_layers",
    "batch_norm_mode",
    "build_schedule",
    "cross_entropy_terms",
    "default_weight_decay",
    "epoch_seed",
    "gradient_multipliers",
    "load_config",
    "load_run",
    "loss_terms",
    "make_strategy",
    "pixel_losses",
    "regularized_weights",
    "segmentation_loss",
    "task_info",
    "train_from_config",
    "weight_decay_loss",
]
