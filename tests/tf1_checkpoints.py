"""Test helper: writes TF1 (TF-slim style) checkpoints with the official DeepLab names.

The files are what `tf.compat.v1.train.Saver` writes for the official model zoo
(`model.ckpt.index` + `model.ckpt.data-00000-of-00001`): a `tf.compat.v1.Graph` of
`tf.compat.v1.Variable`s named like the slim scopes, saved from a session.
"""

import os

import numpy as np
import tensorflow as tf
from conftest import randomize_weights  # noqa: F401 (tests import it from here too)

from keras_deeplab.weights.checkpoint import network_scope, official_variable_names

IMAGENET_CLASSES = 1001


def write_tf1_checkpoint(prefix, variables):
    """Saves `{name: array}` as a TF1 checkpoint at `prefix`; returns the prefix."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    graph = tf.compat.v1.Graph()
    with graph.as_default():
        tf_vars, feeds = {}, []
        for name, value in variables.items():
            value = np.asarray(value)
            # Fed through a placeholder: the values never become graph constants.
            placeholder = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            tf_vars[name] = tf.compat.v1.Variable(placeholder, name=name)
            feeds.append((tf_vars[name].initializer, placeholder, value))
        saver = tf.compat.v1.train.Saver(var_list=tf_vars)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run([f[0] for f in feeds], feed_dict={f[1]: f[2] for f in feeds})
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    return str(prefix)


def model_variables(model, backbone_only=False):
    """`{official name: array}` of the weights of `model`."""
    return {
        name: getattr(layer, attr).numpy()
        for name, (layer, attr) in official_variable_names(model, backbone_only).items()
    }


def ignored_extras(model, variables, seed=1):
    """Variables an official checkpoint also holds and the loader must ignore:
    `global_step`, a few `*/Momentum` and Adam slots, and the ImageNet classifier head."""
    rng = np.random.default_rng(seed)
    net = network_scope(model)
    extras = {"global_step": np.int64(30000), "beta1_power": np.float32(0.9)}
    for name in sorted(variables)[:3] + sorted(variables)[-2:]:
        extras[f"{name}/Momentum"] = rng.normal(size=variables[name].shape).astype(np.float32)
    first = sorted(variables)[0]
    extras[f"{first}/Adam"] = np.zeros_like(variables[first])
    extras[f"{first}/Adam_1"] = np.zeros_like(variables[first])
    if net == "MobilenetV2":
        channels = 1280
        extras["MobilenetV2/Conv_1/weights"] = rng.normal(size=(1, 1, 320, channels))
        for var in ("gamma", "beta", "moving_mean", "moving_variance"):
            extras[f"MobilenetV2/Conv_1/BatchNorm/{var}"] = rng.normal(size=(channels,))
        extras["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = rng.normal(
            size=(1, 1, channels, IMAGENET_CLASSES)
        )
        extras["MobilenetV2/Logits/Conv2d_1c_1x1/biases"] = rng.normal(size=(IMAGENET_CLASSES,))
    else:
        extras[f"{net}/logits/weights"] = rng.normal(size=(1, 1, 2048, IMAGENET_CLASSES))
        extras[f"{net}/logits/biases"] = rng.normal(size=(IMAGENET_CLASSES,))
    return {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v
        for k, v in extras.items()
    }


def write_model_checkpoint(prefix, model, backbone_only=False, extras=True):
    """Writes `model`'s weights (backbone only if asked) under the official names, plus
    the ignored extras; returns `(prefix, variables)` (variables without the extras)."""
    variables = model_variables(model, backbone_only)
    all_vars = dict(variables)
    if extras:
        all_vars.update(ignored_extras(model, variables))
    return write_tf1_checkpoint(prefix, all_vars), variables
