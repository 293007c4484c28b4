"""Small models and datasets for the training tests (also used by `training_worker.py`).

`micro_model` is a DeepLab-shaped segmentation net with every kind of layer the
trainer treats specially (conv with BN, depthwise conv, dropout, a head named like
the official last layers, logits with bias, align-corners upsampling) but only a
few hundred weights, so distributed and subprocess tests trace in a second or two.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.layers import Conv2D, DepthwiseConv2D, Preprocessing, ResizeBilinear
from keras_deeplab.training import TrainConfig, load_config

NUM_CLASSES = 3
ROOT = Path(__file__).resolve().parents[1]


def fresh_env(**extra):
    """Environment of a fresh subprocess: no TF_CONFIG, quiet TF logs, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **extra)
    return env


def run_python(args, timeout, **extra_env):
    """`python ARGS` in a fresh process from the repository root; asserts it succeeded."""
    done = subprocess.run(
        [sys.executable, *(str(a) for a in args)],
        cwd=ROOT,
        env=fresh_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def micro_model(num_classes=NUM_CLASSES, dropout=0.1, bn_momentum=0.9):
    inputs = keras.Input((None, None, 3), name="image")
    x = Preprocessing(name="preprocessing")(inputs)
    x = Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="conv1_BatchNorm")(x)
    x = keras.layers.ReLU()(x)
    x = DepthwiseConv2D(3, padding="same", use_bias=False, name="conv2_depthwise")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="conv2_depthwise_BatchNorm")(x)
    x = Conv2D(8, 1, use_bias=False, name="aspp0")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="aspp0_BatchNorm")(x)
    x = keras.layers.ReLU()(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = Conv2D(num_classes, 1, name="logits_semantic")(x)
    outputs = ResizeBilinear(name="upsampled_logits")([x, inputs])
    return keras.Model(inputs, outputs, name="micro")


def plain_micro_model(num_classes=NUM_CLASSES):
    """`micro_model` without BatchNorm or depthwise convolution: every conv has an AMX
    kernel, so `train.precision=auto` keeps bfloat16 for it on an AMX CPU."""
    inputs = keras.Input((None, None, 3), name="image")
    x = Preprocessing(name="preprocessing")(inputs)
    x = Conv2D(8, 3, strides=2, padding="same", name="conv1")(x)
    x = keras.layers.ReLU()(x)
    x = Conv2D(num_classes, 1, name="logits_semantic")(x)
    outputs = ResizeBilinear(name="upsampled_logits")([x, inputs])
    return keras.Model(inputs, outputs, name="plain_micro")


def fixed_micro_model(seed=0):
    """A builder of dropout-free `micro_model`s that all start from the same weights."""
    keras.utils.set_random_seed(seed)
    init = micro_model(dropout=0.0).get_weights()

    def build():
        model = micro_model(dropout=0.0)
        model.set_weights(init)
        return model

    return build


def random_batches(seed, num_batches=4, batch_size=4, size=17, num_classes=NUM_CLASSES):
    """Batched `(images float32 0..255, masks int32)` with some 255 (ignore) pixels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num_batches * batch_size, size, size, 3)).astype("float32")
    # Labels that depend on the image, so training can make progress.
    masks = (images.mean(-1) // (256 / num_classes)).astype("int32")
    masks[:, :2, :] = 255
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch_size)


def config(tmp_dir, **sections):
    """A `TrainConfig` for tests: `sections` maps section name to a dict of fields."""
    raw = {
        "model": {"name": "deeplabv3_mobilenetv2_dm05"},
        "train": {"steps": 4, "batch_size": 4, "verbose": 0, "strategy": "default"},
        "checkpoint": {"dir": str(tmp_dir), "every_steps": 2, "tensorboard": False},
        "optimizer": {"learning_rate": 0.05},
    }
    for name, fields in sections.items():
        raw.setdefault(name, {}).update(fields)
    return load_config(raw)


def weights_of(model):
    return [np.array(v.numpy()) for v in model.weights]


__all__ = [
    "NUM_CLASSES",
    "TrainConfig",
    "config",
    "fixed_micro_model",
    "micro_model",
    "random_batches",
    "weights_of",
]
