"""FCN-ResNet50/101 (torchvision) with the auxiliary head, the whole model (both depths).

Reference: `torchvision.models.segmentation.fcn_resnet50 / fcn_resnet101(weights=None,
weights_backbone=None, aux_loss=True, num_classes=21)` after `torch.manual_seed(0)`, with
random BatchNorm statistics (each bottleneck's `bn3` scale then times 0.2, so the residual
stream stays bounded), eval mode. Its `"out"` (bilinear `align_corners=False` to the
input size) is compared with our model's output; its `"aux"` with our auxiliary logits
(`aux_fcn_logits`) resized the same way (`tf.image.resize`, half-pixel bilinear). Layer
names: the backbone's are the torch keys with "." -> "_"; `classifier.0/1/4` are
`fcn_conv` / `fcn_bn` / `fcn_logits`, `aux_classifier.*` the `aux_fcn_*` layers.
"""

CASES = ["fcn_resnet50", "fcn_resnet101"]
SIZES = [(65, 97), (67, 93)]
NUM_CLASSES = 21
HEAD = {"conv": "0", "bn": "1", "logits": "4"}
# Random BN statistics make the residual stream grow block after block (logits ~1e6 on
# ResNet-101); each bottleneck's last BN scale is multiplied by this on the torch side.
RESIDUAL_BN_SCALE = 0.2


def torch_reference(case, out_path):
    import numpy as np
    import torch
    import torchvision
    from torchvision.models import segmentation

    from benchmarks.parity.torch_side import (
        normalize,
        random_inputs,
        randomize_batch_norms,
        write_reference,
    )

    torch.manual_seed(0)
    model = getattr(segmentation, case)(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=NUM_CLASSES
    )
    randomize_batch_norms(model)
    with torch.no_grad():  # keep the residual sums bounded through 23 blocks (ResNet-101)
        for name, module in model.named_modules():
            if name.endswith(".bn3"):
                module.weight.mul_(RESIDUAL_BN_SCALE)
    model.eval()
    inputs = random_inputs(SIZES)
    write_reference(
        out_path,
        model,
        inputs,
        mode="torch",
        forward=lambda m, t: m(t)["out"],
        meta={
            "reference": f"torchvision {torchvision.__version__} {case}(aux_loss=True)",
            "resize": "bilinear align_corners=False (half-pixel)",
        },
    )
    # The auxiliary outputs, beside the main ones (same file, keys aux0, aux1, ...).
    aux = {}
    for i, x in enumerate(inputs):
        tensor = torch.from_numpy(np.ascontiguousarray(normalize(x, "torch").transpose(0, 3, 1, 2)))
        with torch.no_grad():
            aux[f"aux{i}"] = model(tensor)["aux"].numpy().transpose(0, 2, 3, 1)
    with np.load(out_path) as data:
        arrays = dict(data)
    np.savez(out_path, **arrays, **aux)


def keras_name(torch_prefix):
    """Our layer name for a torch module prefix."""
    if torch_prefix.startswith("backbone."):
        return torch_prefix[len("backbone.") :].replace(".", "_")
    head, index = torch_prefix.split(".")
    name = {v: k for k, v in HEAD.items()}[index]
    return f"fcn_{name}" if head == "classifier" else f"aux_fcn_{name}"


def keras_check(case, npz):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_deeplab.architectures.fcn_resnet  # noqa: F401 - registers the models
    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference
    from keras_deeplab import create_model

    state, inputs, references, meta = load_reference(npz)
    with np.load(npz) as data:
        aux_references = [data[f"aux{i}"] for i in range(len(inputs))]
    model = create_model(case, num_classes=NUM_CLASSES)
    prefixes = sorted({key.rsplit(".", 1)[0] for key in state})
    copied = copy_weights(model, state, {keras_name(p): p for p in prefixes})
    outputs = [model.predict(x, verbose=0) for x in inputs]
    training_graph = model._training_graph  # the graph with the auxiliary head
    aux_model = keras.Model(training_graph.input, training_graph.get_layer("aux_fcn_logits").output)
    aux_outputs = [
        tf.image.resize(aux_model.predict(x, verbose=0), x.shape[1:3], method="bilinear").numpy()
        for x in inputs
    ]
    aux = compare(aux_outputs, aux_references, inputs)
    result = {
        **compare(outputs, references, inputs),
        "reference": meta["reference"],
        "resize": meta["resize"],
        "tensors_copied": copied,
        "aux_max_abs_diff": aux["max_abs_diff"],
        "aux_logit_scale": aux["logit_scale"],
    }
    keras.backend.clear_session()
    return result
