"""DeepLab v2 multi-scale inputs (MSC) with max fusion.

Chen et al., TPAMI 2017, arXiv:1606.00915, §3.3: the image is fed at scales
{1, 0.75, 0.5} through one network (shared weights), the per-scale logits are
resized to the full-scale grid and fused by a per-position max. Training adds one
loss per scale and one for the fused logits (authors' `train.prototxt`).
"""

import json

import keras

from keras_deeplab.layers import PACKAGE, ResizeBilinear, scale_dimension
from keras_deeplab.segmentation_model import SPEC_KEYS, SegmentationModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleInputs(SegmentationModel):
    """Runs `model` at several input scales and max-fuses the logits.

    A `SegmentationModel` whose graph calls `model` (shared weights) once per scale. In
    inference (`training=False`, also inside `predict`, `export` and TFLite) the output is
    the fused logits at the input resolution. In training the output is a dict: `"fused"`
    plus `"scale_<s>"` for every scale, all at the input resolution, so each can get its
    own loss. Its properties (`architecture`, `backbone_name`, `output_stride`,
    `num_classes`, `preprocessing`) are those of `model`; `activation` is its own.

    Args:
        model: a model mapping images to logits at the input resolution (a
            `SegmentationModel` built with `activation=None`).
        scales: input scales; the first must be 1.0. Scaled sizes follow the
            official `scale_dimension` (`int((size - 1) * s + 1)`), resized with
            align-corners bilinear interpolation.
        activation: None, `"softmax"` or `"sigmoid"` applied to the fused output
            at inference.
        name: model name (default `"multi_scale_inputs"`).

    Example:
        `msc = MultiScaleInputs(keras_deeplab.DeepLabV2(), scales=(1.0, 0.75, 0.5))`
    """

    def __init__(
        self, model, scales=(1.0, 0.75, 0.5), activation=None, name=None, trainable=True, dtype=None
    ):
        scales = tuple(float(s) for s in scales)
        if not scales or scales[0] != 1.0 or any(s <= 0 for s in scales):
            raise ValueError(f"MSC scales must start with 1.0 and be positive; got {scales}.")
        from keras_deeplab.segmentation_model import check_activation

        check_activation(activation)
        input_shape = tuple(model.input_shape[1:]) if _has_input(model) else (None, None, 3)
        inputs = keras.Input(shape=input_shape, name="image")
        per_scale = []
        for scale in scales:
            x = inputs if scale == 1.0 else ResizeBilinear(scale=scale, name=_down(scale))(inputs)
            logits = model(x)
            if scale != 1.0:
                logits = ResizeBilinear(name=_up(scale))([logits, inputs])
            per_scale.append(logits)
        outputs = per_scale[0]
        if len(per_scale) > 1:
            outputs = keras.layers.Maximum(name="max_fusion")(per_scale)
        if activation is not None:
            outputs = keras.layers.Activation(activation, dtype="float32", name="probabilities")(
                outputs
            )
        config = {
            "model": keras.saving.serialize_keras_object(model),
            "scales": list(scales),
            "activation": activation,
        }
        spec = {key: getattr(model, _attribute(key), None) for key in SPEC_KEYS}
        spec["activation"] = activation
        self._init_graph(
            inputs,
            outputs,
            config,
            spec,
            name,
            trainable,
            dtype or keras.config.dtype_policy().name,
        )
        self._inner_name = model.name

    @property
    def model(self):
        """The single-scale model (weights shared with this one)."""
        return self.get_layer(self._inner_name)

    @property
    def scales(self):
        return tuple(json.loads(self._config)["scales"])

    def call(self, inputs, training=None, mask=None):
        if not training:
            return super().call(inputs, training=training, mask=mask)
        per_scale = {}
        for scale in self.scales:
            x = inputs if scale == 1.0 else self.get_layer(_down(scale))(inputs)
            logits = self.model(x, training=True)
            if scale != 1.0:
                logits = self.get_layer(_up(scale))([logits, inputs])
            per_scale[f"scale_{scale:g}"] = logits
        values = list(per_scale.values())
        fused = self.get_layer("max_fusion")(values) if len(values) > 1 else values[0]
        return {"fused": fused, **per_scale}

    def count_macs(self, input_size, depthwise_only=False):
        """Multiply-adds for one image of `input_size`: the sum over the scales."""
        from keras_deeplab.macs import count_macs

        height, width = input_size
        return sum(
            count_macs(
                self.model,
                (scale_dimension(height, s), scale_dimension(width, s)),
                depthwise_only=depthwise_only,
            )
            for s in self.scales
        )

    def with_inference_options(self, fold=True, dtype_policy=None, space_to_batch=True):
        """The single-scale model rewritten for inference, wrapped again (same scales)."""
        from keras_deeplab.optimize import optimize_for_inference

        inner = optimize_for_inference(
            self.model, fold=fold, dtype_policy=dtype_policy, space_to_batch=space_to_batch
        )
        return MultiScaleInputs(
            inner, scales=self.scales, activation=self.activation, name=self.name
        )

    def get_config(self):
        config = json.loads(self._config)
        return {**config, "name": self.name, "trainable": self.trainable, "dtype": self._dtype}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def _has_input(model):
    try:
        return model.input_shape is not None
    except (AttributeError, ValueError):
        return False


def _attribute(key):
    return "backbone_name" if key == "backbone" else key


def _down(scale):
    return f"input_scale_{scale:g}"


def _up(scale):
    return f"logits_scale_{scale:g}"


__all__ = ["MultiScaleInputs"]
