"""DeepLab v2 multi-scale inputs (MSC) with max fusion.

Chen et al., TPAMI 2017, arXiv:1606.00915, §3.3: the image is fed at scales
{1, 0.75, 0.5} through one network (shared weights), the per-scale logits are
resized to the full-scale grid and fused by a per-position max. Training adds one
loss per scale and one for the fused logits (authors' `train.prototxt`).
"""

import keras

from keras_deeplab.layers import PACKAGE, ResizeBilinear


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleInputs(keras.Model):
    """Runs `model` at several input scales and max-fuses the logits.

    In inference (`training=False`, also inside `predict`, `export` and TFLite)
    the output is the fused logits at the input resolution. In training the
    output is a dict: `"fused"` plus `"scale_<s>"` for every scale, all at the
    input resolution, so each can get its own loss.

    Args:
        model: a model mapping images to logits at the input resolution.
        scales: input scales; the first must be 1.0. Scaled sizes follow the
            official `scale_dimension` (`int((size - 1) * s + 1)`), resized with
            align-corners bilinear interpolation.
        activation: None, `"softmax"` or `"sigmoid"` applied to the fused output
            at inference.

    Example:
        `msc = MultiScaleInputs(keras_deeplab.DeepLabV2(), scales=(1.0, 0.75, 0.5))`
    """

    def __init__(self, model, scales=(1.0, 0.75, 0.5), activation=None, **kwargs):
        super().__init__(**kwargs)
        scales = tuple(float(s) for s in scales)
        if not scales or scales[0] != 1.0 or any(s <= 0 for s in scales):
            raise ValueError(f"MSC scales must start with 1.0 and be positive; got {scales}.")
        self.model = model
        self.scales = scales
        self.activation = activation
        self._downscale = [ResizeBilinear(scale=s, name=f"input_scale_{s:g}") for s in scales]
        self._upscale = [ResizeBilinear(name=f"logits_scale_{s:g}") for s in scales]
        self._fuse = keras.layers.Maximum(name="max_fusion")
        self._activation = (
            None
            if activation is None
            else keras.layers.Activation(activation, dtype="float32", name="probabilities")
        )
        # All weights live in `model`, which is already built.
        self.built = model.built

    def build(self, input_shape):
        self.model.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        per_scale = {}
        for scale, down, up in zip(self.scales, self._downscale, self._upscale, strict=True):
            x = inputs if scale == 1.0 else down(inputs)
            logits = self.model(x, training=training)
            per_scale[f"scale_{scale:g}"] = logits if scale == 1.0 else up([logits, inputs])
        fused = self._fuse(list(per_scale.values())) if len(per_scale) > 1 else logits
        if training:
            return {"fused": fused, **per_scale}
        return fused if self._activation is None else self._activation(fused)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    def count_macs(self, input_size):
        """Multiply-adds for one image of `input_size`: the sum over the scales."""
        from keras_deeplab.layers import scale_dimension
        from keras_deeplab.macs import count_macs

        height, width = input_size
        return sum(
            count_macs(self.model, (scale_dimension(height, s), scale_dimension(width, s)))
            for s in self.scales
        )

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "scales": list(self.scales),
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
