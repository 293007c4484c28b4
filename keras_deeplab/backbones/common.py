"""What every backbone shares: argument checks, the output-stride rule, BatchNorm.

A backbone builder returns a `keras.Model` taking *normalised* images
(`(None, None, 3)` by default) whose outputs are a dict of feature taps:

* `"stride_4"`: the low-level tap the v3+ decoder uses (pre-activation where
  the official code taps it),
* `"stride_8"` / `"stride_16"`: taps at those strides, present only when they
  are reached before `output_stride`,
* `"final"`: the last feature map, at `output_stride`.

Each model also carries `feature_channels` (dict tap -> channels) and
`output_stride` as plain attributes for the heads.
"""

import keras

from keras_deeplab.layers import BatchNormalization

VALID_OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(output_stride, allowed=VALID_OUTPUT_STRIDES, backbone=""):
    if output_stride not in allowed:
        raise ValueError(
            f"output_stride={output_stride!r} is not supported"
            f"{' by ' + backbone if backbone else ''}; allowed values: {list(allowed)}."
        )


def check_input_shape(input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3) with height/width None or int; got {input_shape}."
        )
    if input_shape[-1] != 3:
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


def finish_backbone(inputs, taps, name, output_stride):
    """Builds the backbone model from `taps` (dict name -> tensor)."""
    model = keras.Model(inputs, taps, name=name)
    model.feature_channels = {k: int(v.shape[-1]) for k, v in taps.items()}
    model.output_stride = output_stride
    return model
