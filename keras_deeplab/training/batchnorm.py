"""BatchNorm modes for training: official `fine_tune_batch_norm` and synchronized BN.

Official DeepLab (`model.py`, `core/feature_extractor.py`): with
`fine_tune_batch_norm=False` every BatchNorm runs with `is_training=False`: it
normalises with its *moving* statistics and never updates them, while gamma and
beta stay trainable variables that still receive gradients. Keras'
`layer.trainable = False` is different (it also freezes gamma/beta), so this
module switches the layers' mode instead: inside `batch_norm_mode(model,
fine_tune_batch_norm=False)` each BatchNormalization layer's `call` runs with
`training=False` whatever the model is called with (dropout still sees
`training=True`). With `synchronized=True` (and fine-tuning) the layers compute
the batch moments over all replicas, so a global batch split over devices gives the
statistics of the whole batch: one all-reduce per layer of the concatenated float32
`[sum, sum of squares, count]` (Keras' own synchronized path issues three), whose
gradient is again one all-reduce.

Moving statistics on several replicas: frozen BN never updates them and synchronised BN
updates every replica with the same global moments; fine-tuned BN *without*
synchronisation updates each replica's copy with its own batch, so the trainer calls
`average_moving_statistics` after the forward pass (one batched all-reduce of every
layer's moving mean and variance per step): every replica, hence checkpoints, exports and
the evaluation during training, holds the same values, the mean of the replicas' updates.

The mode is read when the train step is traced: enter the context before the
first call of the `tf.function` and keep it for the step's lifetime.
"""

import contextlib

import keras
import tensorflow as tf

from keras_deeplab import _compat


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` inside `model` (nested models included)."""
    return [
        layer
        for layer in _compat.all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _inference_call(layer):
    call = type(layer).call

    def frozen_call(inputs, training=None, mask=None):
        return call(layer, inputs, training=False, mask=mask)

    return frozen_call


def _channel_axis(layer, rank):
    axis = layer.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return axes[0] % rank if len(axes) == 1 else None


def _synchronized_call(layer):
    """`call` computing the batch moments over all replicas with one all-reduce."""
    call = type(layer).call

    def synchronized_call(inputs, training=None, mask=None):
        rank = len(inputs.shape)
        axis = _channel_axis(layer, rank)
        if not training or not layer.trainable or mask is not None or layer.renorm or axis is None:
            return call(layer, inputs, training=training, mask=mask)  # Keras' own path
        x = tf.cast(inputs, tf.float32)
        reduce_axes = [i for i in range(rank) if i != axis]
        channels = x.shape[axis]
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduce_axes)), tf.float32)
        local = tf.concat(
            [
                tf.reduce_sum(x, reduce_axes),
                tf.reduce_sum(tf.square(x), reduce_axes),
                tf.reshape(count, [1]),
            ],
            axis=0,
        )
        context = tf.distribute.get_replica_context()
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, local) if context else local
        mean = tf.math.divide_no_nan(total[:channels], total[-1])
        square_mean = tf.math.divide_no_nan(total[channels : 2 * channels], total[-1])
        variance = tf.maximum(square_mean - tf.square(mean), 0.0)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
        shape = [1] * rank
        shape[axis] = channels
        gamma = tf.reshape(tf.cast(layer.gamma, tf.float32), shape) if layer.scale else None
        beta = tf.reshape(tf.cast(layer.beta, tf.float32), shape) if layer.center else None
        y = tf.nn.batch_normalization(
            x, tf.reshape(mean, shape), tf.reshape(variance, shape), beta, gamma, layer.epsilon
        )
        return tf.cast(y, layer.compute_dtype)

    return synchronized_call


def average_moving_statistics(layers):
    """Sets every replica's BN moving mean/variance to their mean over the replicas.

    Call in a replica context after the forward pass (one batched all-reduce). Without a
    replica context, or on one replica, it does nothing.

    Example:
        ```python
        outputs = model(images, training=True)  # in strategy.run, BN fine-tuned
        average_moving_statistics(batch_norm_layers(model))
        ```
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1 or not layers:
        return
    variables = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    values = context.all_reduce(
        tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables]
    )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


@contextlib.contextmanager
def batch_norm_mode(model, fine_tune_batch_norm=True, synchronized=False, momentum=None):
    """Context in which `model`'s BatchNorm layers follow the official training mode.

    Args:
        model: a Keras model.
        fine_tune_batch_norm: True: batch statistics and moving-average updates in
            training (Keras default). False: moving statistics, no updates, gamma
            and beta still trainable (official semantics).
        synchronized: all-reduce the batch moments across replicas, one all-reduce per
            layer (only used when fine-tuning).
        momentum: moving-average momentum used while training (None keeps each
            layer's, e.g. the official 0.9997); short runs need a smaller one (0.9)
            for the moving statistics to catch up with the weights.

    Example:
        ```python
        with batch_norm_mode(model, fine_tune_batch_norm=False):
            logits = model(images, training=True)  # BN in inference mode
        ```
    """
    layers = batch_norm_layers(model)
    saved = [
        (layer, layer.synchronized, layer.momentum, "call" in layer.__dict__) for layer in layers
    ]
    try:
        for layer in layers:
            layer.synchronized = bool(synchronized and fine_tune_batch_norm)
            if momentum is not None:
                layer.momentum = float(momentum)
            if not fine_tune_batch_norm:
                layer.call = _inference_call(layer)
            elif synchronized:
                layer.call = _synchronized_call(layer)
        yield layers
    finally:
        for layer, was_synchronized, was_momentum, had_call in saved:
            layer.synchronized = was_synchronized
            layer.momentum = was_momentum
            if not had_call and "call" in layer.__dict__:
                del layer.call
