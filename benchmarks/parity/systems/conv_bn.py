"""Proof system: a small Conv-BN-ReLU / depthwise / ConvTranspose stack in torch and in Keras.

Shows the harness end to end and the layouts every system uses: conv (no bias), BatchNorm with
random statistics, a stride-2 depthwise conv with torch's symmetric padding 1 (Keras: explicit
`ZeroPadding2D(1)` + "valid"; "same" pads an even input bottom/right only, which the even
size catches: odd sizes alone do not), a transposed conv with bias,
and torch's input normalisation (`Preprocessing("torch")` on the Keras side).
"""

CASES = ["stack", "stack_dm2"]
SIZES = [(33, 47), (41, 29), (32, 46)]  # odd, odd, even: "same" padding differs on even
MULTIPLIER = {"stack": 1, "stack_dm2": 2}
MAPPING = {"conv1": "conv1", "bn1": "bn1", "dw": "dw", "bn2": "bn2", "up": "up"}
CLASSES = 5


def torch_reference(case, out_path):
    from collections import OrderedDict

    import torch
    from torch import nn

    from benchmarks.parity.torch_side import random_inputs, randomize_batch_norms, write_reference

    m = MULTIPLIER[case]
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(8),
            relu1=nn.ReLU(),
            dw=nn.Conv2d(8, 8 * m, 3, stride=2, padding=1, groups=8),
            bn2=nn.BatchNorm2d(8 * m),
            relu2=nn.ReLU(),
            up=nn.ConvTranspose2d(8 * m, CLASSES, 4, stride=2),
        )
    )
    randomize_batch_norms(model, seed=1)
    meta = {"reference": f"torch {torch.__version__} nn.Sequential", "resize": "none"}
    write_reference(out_path, model, random_inputs(SIZES, seed=0), mode="torch", meta=meta)


def keras_model(case):
    """The Keras twin of the torch stack (RGB 0..255 in, torch normalisation inside)."""
    import keras

    from keras_deeplab.layers import Preprocessing

    m = MULTIPLIER[case]
    inputs = keras.Input((None, None, 3))
    x = Preprocessing("torch")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=m, name="dw")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2DTranspose(CLASSES, 4, strides=2, name="up")(x)
    return keras.Model(inputs, x, name=f"conv_bn_{case}")


def keras_check(case, npz):
    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference

    state, inputs, references, meta = load_reference(npz)
    model = keras_model(case)
    copied = copy_weights(model, state, MAPPING)
    outputs = [model.predict(x, verbose=0) for x in inputs]
    return {
        **compare(outputs, references, inputs),
        "reference": meta["reference"],
        "resize": meta["resize"],
        "tensors_copied": copied,
    }
