"""The dilated context module of Yu & Koltun, with its identity initialisation.

Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016,
arXiv:1511.07122; layers as the authors' `fyu/dilation` (`network.py` `build_context`,
`models/dilation8_*_deploy.prototxt`). On C class-score maps: seven 3x3 convolutions with
ReLU at dilations 1, 1, 2, 4, 8, 16, 1, then a 1x1 convolution to the C classes:

| layer    | ctx_conv1_1 | ctx_conv1_2 | ctx_conv2_1 | ctx_conv3_1 | ctx_conv4_1 | ctx_conv5_1 | ctx_fc1 | ctx_final |
|----------|-------------|-------------|-------------|-------------|-------------|-------------|---------|-----------|
| dilation | 1           | 1           | 2           | 4           | 8           | 16          | 1       | 1 (1x1)   |
| basic    | C           | C           | C           | C           | C           | C           | C       | C         |
| large    | 2C          | 2C          | 4C          | 8C          | 16C         | 32C         | 32C     | C         |

Padding as the deploy nets: the basic module pads each layer by its dilation ("same",
CamVid deploy); the large one zero-pads the input by 33 (= 1+1+2+4+8+16+1) and runs the
convolutions unpadded (VOC deploy). Both keep the spatial size.

Identity initialisation (paper eq. 4/5): the centre tap of every kernel maps input channel
`a` to output channel `b` with weight `C / c_out` when `floor(a C / c_in) == floor(b C /
c_out)` (the identity when `c_in == c_out == C`), every other weight is Gaussian noise of
std `noise * C / c_out` (0 for the basic module: it then maps any non-negative input to
itself exactly; 0.01 for the large one, whose widened copies need noise to differ), biases 0.

The head `"context_module"` (option `context="basic"|"large"`) puts the module after any
head returning class scores, e.g. `heads=("logits", "context_module")`.
"""

import keras
import numpy as np

from keras_deeplab.layers import PACKAGE, Conv2D
from keras_deeplab.registry import Head, register_head

CONTEXT_SIZES = ("basic", "large")
# (layer name, dilation, width multiplier of the large module) of the 3x3 layers.
CONTEXT_LAYERS = (
    ("ctx_conv1_1", 1, 2),
    ("ctx_conv1_2", 1, 2),
    ("ctx_conv2_1", 2, 4),
    ("ctx_conv3_1", 4, 8),
    ("ctx_conv4_1", 8, 16),
    ("ctx_conv5_1", 16, 32),
    ("ctx_fc1", 1, 32),
)
LARGE_PADDING = sum(rate for _, rate, _ in CONTEXT_LAYERS)  # 33
DEFAULT_NOISE = {"basic": 0.0, "large": 0.01}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContextIdentity(keras.initializers.Initializer):
    """Yu & Koltun's (generalised) identity initialiser for `[kh, kw, c_in, c_out]` kernels.

    The centre tap maps channel `a` to `b` with weight `groups / c_out` when
    `floor(a * groups / c_in) == floor(b * groups / c_out)`; every other weight is drawn from
    N(0, (noise * groups / c_out)^2). With `c_in == c_out == groups` and `noise=0` the kernel
    is the identity.

    Args:
        groups: C, the number of classes the module carries.
        noise: noise std relative to the identity weight `groups / c_out` (0: none).
        seed: seed of the noise.

    Example:
        >>> kernel = ContextIdentity(groups=3)((3, 3, 3, 3))
        >>> np.asarray(kernel)[1, 1]  # the 3x3 identity; the other taps are 0
    """

    def __init__(self, groups, noise=0.0, seed=None):
        self.groups = int(groups)
        self.noise = float(noise)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, c_in, c_out = shape
        scale = self.groups / c_out
        group_in = np.floor(np.arange(c_in) * self.groups / c_in)
        group_out = np.floor(np.arange(c_out) * self.groups / c_out)
        identity = (group_in[:, None] == group_out[None, :]).astype("float32")
        rng = np.random.default_rng(self.seed)
        kernel = np.zeros(shape, "float32")
        if self.noise > 0:
            kernel = rng.normal(0.0, self.noise * scale, shape).astype("float32")
        centre = kernel[kh // 2, kw // 2]
        kernel[kh // 2, kw // 2] = np.where(identity > 0, scale, centre)
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"groups": self.groups, "noise": self.noise, "seed": self.seed}


def check_context(context, allow_none=False):
    """The context module size: `"basic"` or `"large"` (None too when `allow_none`)."""
    allowed = (*CONTEXT_SIZES, None) if allow_none else CONTEXT_SIZES
    if context not in allowed:
        raise ValueError(
            f"context must be one of {allowed} (Yu & Koltun's basic module of C channels, or "
            f"the large one widening to 32C); got {context!r}."
        )
    return context


def context_module(x, num_classes, context="basic", noise=None, seed=None):
    """The context module on `x` (`[B, H, W, c]`, normally the C class scores): logits of
    the same spatial size, `num_classes` channels. `noise=None`: the size's default."""
    check_context(context)
    noise = DEFAULT_NOISE[context] if noise is None else float(noise)
    large = context == "large"
    if large:
        x = keras.layers.ZeroPadding2D(LARGE_PADDING, name="ctx_pad")(x)
    for i, (name, rate, multiplier) in enumerate(CONTEXT_LAYERS):
        x = Conv2D(
            num_classes * (multiplier if large else 1),
            3,
            padding="valid" if large else "same",
            dilation_rate=rate,
            activation="relu",
            kernel_initializer=ContextIdentity(
                num_classes, noise, None if seed is None else seed + i
            ),
            name=name,
        )(x)
    return Conv2D(
        num_classes,
        1,
        kernel_initializer=ContextIdentity(num_classes, noise, None if seed is None else seed + 7),
        name="ctx_final",
    )(x)


register_head(
    Head(
        "context_module",
        build=lambda x, features, args: context_module(x, args["num_classes"], args["context"]),
        options={"context": "basic"},
        description="Yu & Koltun's dilated context module (basic or large), identity init",
    )
)
