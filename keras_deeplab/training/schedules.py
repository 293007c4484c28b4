"""Learning-rate schedules of the official DeepLab training (`utils/train_utils.py:
get_model_learning_rate`), as serializable Keras `LearningRateSchedule`s.

* `PolyDecay`: `lr = (base - end) * (1 - s / decay_steps) ** power + end` (power 0.9),
  the DeepLab v2/v3/v3+ policy.
* `StepDecay`: `lr = base * rate ** floor(s / decay_steps)` (x0.1 every 2000 steps in
  the official flags; the v1 baseline).

Both support the official slow start: for `step < warmup_steps` the rate is
`warmup_learning_rate` (`warmup="constant"`, official burn-in `none`) or rises
linearly from it to `base` (`warmup="linear"`); the decay then runs on
`s = step - warmup_steps`.
"""

import keras
import tensorflow as tf

from keras_deeplab.layers import PACKAGE

WARMUP_TYPES = ("linear", "constant")


class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(
        self, initial_learning_rate, warmup_steps=0, warmup_learning_rate=1e-4, warmup="linear"
    ):
        if warmup not in WARMUP_TYPES:
            raise ValueError(f"warmup must be one of {WARMUP_TYPES}; got {warmup!r}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_learning_rate = float(warmup_learning_rate)
        self.warmup = warmup

    def _decayed(self, step):
        raise NotImplementedError

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decayed = self._decayed(tf.maximum(step - self.warmup_steps, 0.0))
        if not self.warmup_steps:
            return decayed
        start = self.warmup_learning_rate
        if self.warmup == "linear":
            start = start + (self.initial_learning_rate - start) * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, start, decayed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_learning_rate": self.warmup_learning_rate,
            "warmup": self.warmup,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolyDecay(_WarmupSchedule):
    """Poly learning rate with optional warm-up (official `learning_policy="poly"`).

    Args:
        initial_learning_rate: base rate (official VOC train_aug: 0.007).
        decay_steps: steps of the decay (official: training steps - warmup steps).
        power: poly exponent (0.9).
        end_learning_rate: rate reached after `decay_steps` (0).
        warmup_steps, warmup_learning_rate, warmup: the slow start (see module).

    Example:
        `PolyDecay(0.007, decay_steps=30000)(15000)  # 0.007 * 0.5 ** 0.9`
    """

    def __init__(
        self, initial_learning_rate, decay_steps, power=0.9, end_learning_rate=0.0, **kwargs
    ):
        super().__init__(initial_learning_rate, **kwargs)
        if decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1; got {decay_steps}.")
        self.decay_steps = int(decay_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)

    def _decayed(self, step):
        progress = tf.minimum(step, float(self.decay_steps)) / float(self.decay_steps)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * tf.pow(1.0 - progress, self.power) + self.end_learning_rate

    def get_config(self):
        return {
            **super().get_config(),
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class StepDecay(_WarmupSchedule):
    """Staircase decay: multiply by `decay_rate` every `decay_steps` (official `"step"`).

    Example:
        `StepDecay(1e-3, decay_steps=2000, decay_rate=0.1)(4500)  # 1e-5`
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate=0.1, **kwargs):
        super().__init__(initial_learning_rate, **kwargs)
        if decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1; got {decay_steps}.")
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)

    def _decayed(self, step):
        return self.initial_learning_rate * tf.pow(
            self.decay_rate, tf.floor(step / float(self.decay_steps))
        )

    def get_config(self):
        return {
            **super().get_config(),
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
        }


def build_schedule(schedule, learning_rate, total_steps):
    """The schedule of a `ScheduleConfig` for `total_steps` training steps at base `learning_rate`."""
    warmup = {
        "warmup_steps": schedule.warmup_steps,
        "warmup_learning_rate": schedule.warmup_learning_rate,
        "warmup": schedule.warmup,
    }
    if schedule.policy == "poly":
        return PolyDecay(
            learning_rate,
            decay_steps=max(1, total_steps - schedule.warmup_steps),
            power=schedule.power,
            end_learning_rate=schedule.end_learning_rate,
            **warmup,
        )
    if schedule.policy == "step":
        return StepDecay(
            learning_rate,
            decay_steps=schedule.decay_steps,
            decay_rate=schedule.decay_rate,
            **warmup,
        )
    raise ValueError(f"Unknown learning-rate policy {schedule.policy!r}; use 'poly' or 'step'.")
