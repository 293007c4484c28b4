"""What every backbone shares: the `Backbone` model class, argument checks, the
output-stride rule, BatchNorm.

A backbone is a `Backbone` (a functional `keras.Model`) taking *normalised* images
(`(None, None, 3)` by default) whose outputs are a dict of feature taps:

* `"stride_4"`: the low-level tap the v3+ decoder uses (pre-activation where
  the official code taps it),
* `"stride_8"` / `"stride_16"`: taps at those strides, present only when they
  are reached before `output_stride`,
* `"final"`: the last feature map, at `output_stride`.

`backbone.feature_info` lists the taps with their stride and channels (as timm's
`FeatureInfo` / keras-hub's `pyramid_outputs`); it is part of `get_config()`, so it
survives `.keras` files and `Backbone.from_config` (also inside a model cloned by
`keras.models.clone_model`, which clones nested layers through their config).

A family (xception, resnet, mobilenetv2, vgg16) is one module whose graph function is
registered with `@register_family(name)`: `fn(input_shape, output_stride, multi_grid,
**options) -> (inputs, taps, default_name)`.
"""

import json

import keras

from keras_deeplab.layers import PACKAGE, BatchNormalization

# family name -> graph function (see `register_family`)
BACKBONE_FAMILIES = {}

VALID_OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(output_stride, allowed=VALID_OUTPUT_STRIDES, backbone=""):
    if output_stride not in allowed:
        raise ValueError(
            f"output_stride={output_stride!r} is not supported"
            f"{' by ' + backbone if backbone else ''}; allowed values: {list(allowed)}."
        )


def check_input_shape(input_shape, channels=3):
    """`input_shape` as a tuple `(H, W, C)`; `channels`: the C required (None: any >= 1)."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) with height/width None or int; "
            f"got {input_shape}."
        )
    if channels is None:
        if not isinstance(input_shape[-1], int) or input_shape[-1] < 1:
            raise ValueError(
                f"input_shape must end with a positive channel count (e.g. 1 for grayscale); "
                f"got {input_shape}."
            )
        return input_shape
    if input_shape[-1] != channels:
        raise ValueError(
            f"DeepLab models take RGB images with 3 channels; input_shape {input_shape} has "
            f"{input_shape[-1]}. Convert grayscale (1 channel) or RGBA (4 channels) images to RGB first."
        )
    return input_shape


def check_multi_grid(multi_grid, length=3):
    if multi_grid is None:
        return (1,) * length
    multi_grid = tuple(int(r) for r in multi_grid)
    if len(multi_grid) != length or any(r < 1 for r in multi_grid):
        raise ValueError(
            f"multi_grid must be {length} positive integers (e.g. (1, 2, 4)); got {multi_grid}."
        )
    return multi_grid


class StridePlanner:
    """The official output-stride rule (`stack_blocks_dense`), in one place.

    Units are visited in order with their nominal stride. Until the target
    `output_stride` is reached a unit runs at its stride with rate 1; once it is
    reached, every later unit runs at stride 1 and the current atrous rate,
    which is then multiplied by the unit's nominal stride.

    Args:
        output_stride: target stride of the final feature map.
        current_stride: stride already applied before the first planned unit.
    """

    def __init__(self, output_stride, current_stride=1):
        self.output_stride = output_stride
        self.current_stride = current_stride
        self.rate = 1

    def next(self, stride):
        """Returns `(stride, rate)` for the next unit of nominal `stride`."""
        if self.current_stride == self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.current_stride *= stride
        if self.current_stride > self.output_stride:
            raise ValueError(
                f"output_stride {self.output_stride} cannot be reached with these strides."
            )
        return stride, 1

    @property
    def stride(self):
        """Actual stride of the features after the units planned so far."""
        return self.current_stride


def batch_norm(x, name, momentum, epsilon):
    return BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


def register_family(name):
    """Decorator registering a backbone family's graph function under `name`.

    Example:
        ```python
        @register_family("tiny")
        def _tiny_graph(input_shape, output_stride, multi_grid, width=8):
            inputs = keras.Input(shape=input_shape, name="image")
            ...
            return inputs, {"stride_4": low, "final": x}, "tiny"
        ```
    """

    def decorator(fn):
        BACKBONE_FAMILIES[name] = fn
        return fn

    return decorator


def _tap_stride(tap, output_stride):
    return output_stride if tap == "final" else int(tap.rsplit("_", 1)[1])


def feature_info_of(taps, output_stride):
    """`[{"name", "stride", "channels"}]` of a dict of tap tensors (stride order)."""
    return [
        {"name": tap, "stride": _tap_stride(tap, output_stride), "channels": int(t.shape[-1])}
        for tap, t in taps.items()
    ]


def frozen_config(config):
    """`config` as JSON text: what a `.keras` file gives back (tuples become lists), and an
    attribute that neither Keras nor TF checkpoint tracking wraps."""
    return json.dumps(config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Backbone(keras.Model):
    """A feature extractor: normalised images -> dict of feature taps (`"stride_4"`, ..., `"final"`).

    Built from its arguments (`get_config()` returns them, plus `feature_info`), so it
    reloads from a `.keras` file or `Backbone.from_config` as the same class with the same
    taps.

    Args:
        family: a registered family (`"xception"`, `"resnet"`, `"mobilenetv2"`, `"vgg16"`).
        input_shape: `(height, width, 3)`; height/width may be None.
        output_stride: 8, 16 or 32, the stride of `"final"`.
        multi_grid: unit rates of the last block (families that have one), or None.
        name: model name (default: the family's, e.g. `"xception_65"`).
        **options: the family's own arguments (`depth`, `flavour`, `depth_multiplier`).

    Example:
        >>> backbone = Backbone("xception", output_stride=16, depth=65)
        >>> backbone.feature_info[0]
        {'name': 'stride_4', 'stride': 4, 'channels': 256}
    """

    def __init__(
        self,
        family,
        input_shape=(None, None, 3),
        output_stride=16,
        multi_grid=None,
        name=None,
        trainable=True,
        feature_info=None,
        **options,
    ):
        if family not in BACKBONE_FAMILIES:  # (importing this module registered them all)
            raise ValueError(
                f"Unknown backbone family {family!r}; registered: {sorted(BACKBONE_FAMILIES)}."
            )
        graph = BACKBONE_FAMILIES[family]
        inputs, taps, default_name = graph(
            input_shape=input_shape, output_stride=output_stride, multi_grid=multi_grid, **options
        )
        super().__init__(
            inputs=inputs, outputs=taps, name=name or default_name, trainable=trainable
        )
        info = feature_info_of(taps, output_stride)
        if feature_info is not None and [dict(i) for i in feature_info] != info:
            raise ValueError(
                f"Backbone {self.name!r}: its saved feature_info {feature_info} differs from the "
                f"taps this version builds {list(info)}; the file comes from another version."
            )
        self._config = frozen_config(
            {
                "family": family,
                "input_shape": input_shape,
                "output_stride": output_stride,
                "multi_grid": multi_grid,
                **dict(sorted(options.items())),
                "feature_info": info,
            }
        )

    @property
    def feature_info(self):
        """One dict per tap, in stride order: `{"name", "stride", "channels"}`."""
        return json.loads(self._config)["feature_info"]

    @property
    def feature_channels(self):
        """`{tap name: channels}`."""
        return {i["name"]: i["channels"] for i in self.feature_info}

    @property
    def output_stride(self):
        """Stride of the `"final"` tap."""
        return self.feature_info[-1]["stride"]

    @property
    def family(self):
        return json.loads(self._config)["family"]

    def get_config(self):
        config = json.loads(self._config)
        info = config.pop("feature_info")
        return {**config, "name": self.name, "trainable": self.trainable, "feature_info": info}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
