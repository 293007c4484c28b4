"""FCN-32s/16s/8s/8s-at-once (VGG-16) against torchfcn, the PyTorch port of the Caffe nets.

Reference: `torchfcn.models.FCN32s / FCN16s / FCN8s / FCN8sAtOnce(n_class=21)` (pad 100,
ceil-mode pooling, fixed bilinear `ConvTranspose2d` from `get_upsampling_weight`, crops
19 / 5, 27 / 5, 9, 31, at-once pool4 * 0.01 and pool3 * 0.0001). torchfcn zero-initialises
every conv, which would make the logits identically zero: after `torch.manual_seed(0)` the
convs get He-normal kernels and small random biases (score layers included), the
deconvolutions keep torchfcn's bilinear kernels. Both sides take the same RGB images; the
torch side gets them BGR minus the package's "caffe" mean, the Keras model normalises
inside (`Preprocessing("caffe")`). The Keras side also checks that our `BilinearUpsampling`
kernels equal torchfcn's before copying them.
"""

CASES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"]
TORCH_CLASSES = {
    "fcn32s": "FCN32s",
    "fcn16s": "FCN16s",
    "fcn8s": "FCN8s",
    "fcn8s_atonce": "FCN8sAtOnce",
}
SIZES = [(64, 80), (67, 93)]
NUM_CLASSES = 21
CONVS = {
    f"conv{b}_{c}": f"block{b}_conv{c}"
    for b, convs in enumerate((2, 2, 3, 3, 3), start=1)
    for c in range(1, convs + 1)
}
OTHERS = (
    "fc6",
    "fc7",
    "score_fr",
    "score_pool4",
    "score_pool3",
    "upscore",
    "upscore2",
    "upscore16",
    "upscore_pool4",
    "upscore8",
)


def torch_reference(case, out_path):
    import math

    import torch
    import torchfcn

    from benchmarks.parity.torch_side import package_version, random_inputs, write_reference

    torch.manual_seed(0)
    model = getattr(torchfcn.models, TORCH_CLASSES[case])(n_class=NUM_CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                module.bias.normal_(0.0, 0.1)
    write_reference(
        out_path,
        model,
        random_inputs(SIZES),
        mode="caffe",
        meta={
            "reference": f"torchfcn {package_version('torchfcn')} {TORCH_CLASSES[case]}",
            "resize": "fixed bilinear ConvTranspose2d + crop (no resize)",
        },
    )


def keras_check(case, npz):
    import keras
    import numpy as np

    import keras_deeplab.architectures.fcn  # noqa: F401 - registers the models
    from benchmarks.parity.convert import conv_transpose_kernel, copy_weights
    from benchmarks.parity.reference import compare, load_reference
    from keras_deeplab import create_model

    state, inputs, references, meta = load_reference(npz)
    model = create_model(case, num_classes=NUM_CLASSES)
    layers = {layer.name for layer in model.layers}
    mapping = {ours: theirs for theirs, ours in CONVS.items()}
    mapping.update({name: name for name in OTHERS if name in layers})
    bilinear_equal = all(
        np.array_equal(
            model.get_layer(name).get_weights()[0],
            conv_transpose_kernel(state[f"{name}.weight"]),
        )
        for name in OTHERS
        if name.startswith("upscore") and name in layers
    )
    copied = copy_weights(model, state, mapping)
    outputs = [model.predict(x, verbose=0) for x in inputs]
    result = {
        **compare(outputs, references, inputs),
        "reference": meta["reference"],
        "resize": meta["resize"],
        "tensors_copied": copied,
        "bilinear_kernels_equal_torchfcn": bool(bilinear_equal),
    }
    keras.backend.clear_session()
    return result
