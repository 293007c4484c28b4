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
the batch moments over all replicas (`BatchNormalization(synchronized=True)`), so
a global batch split over devices gives the statistics of the whole batch.

The mode is read when the train step is traced: enter the context before the
first call of the `tf.function` and keep it for the step's lifetime.
"""

import contextlib

import keras

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


@contextlib.contextmanager
def batch_norm_mode(model, fine_tune_batch_norm=True, synchronized=False, momentum=None):
    """Context in which `model`'s BatchNorm layers follow the official training mode.

    Args:
        model: a Keras model.
        fine_tune_batch_norm: True: batch statistics and moving-average updates in
            training (Keras default). False: moving statistics, no updates, gamma
            and beta still trainable (official semantics).
        synchronized: all-reduce the batch moments across replicas (only used
            when fine-tuning).
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
        yield layers
    finally:
        for layer, was_synchronized, was_momentum, had_call in saved:
            layer.synchronized = was_synchronized
            layer.momentum = was_momentum
            if not had_call and "call" in layer.__dict__:
                del layer.call
