"""RefineNet-50/101 against the pip `refinenet` package (best-of-acrv, the DrSleep port).

Reference: `refinenet.models.refinenet.RefineNet(Bottleneck, [3, 4, 6, 3] | [3, 4, 23, 3])`,
built with `torch.manual_seed(0)`, random BatchNorm statistics, eval mode, no pretrained
weights. Its forward returns the class logits at stride 4 (`clf_conv`), every internal
resize bilinear with `align_corners=True`; the Keras side compares the output of our
`clf_conv` layer (same stride-4 grid) on the same RGB inputs ("torch" normalisation on both
sides). Layer names: the backbone's are the torch keys with "." -> "_"; the refinement
path's drop the `nn.Sequential` index (`adapt_stage1_b.0.1_conv` -> `adapt_stage1_b_1_conv`).
"""

import re

CASES = ["refinenet_resnet50", "refinenet_resnet101"]
LAYERS = {"refinenet_resnet50": (50, [3, 4, 6, 3]), "refinenet_resnet101": (101, [3, 4, 23, 3])}
SIZES = [(65, 97), (97, 129), (64, 96)]
NUM_CLASSES = 21
SEQUENTIAL = re.compile(r"^(adapt_stage\d_b|mflow_conv_g\d_b|mflow_conv_g\d_pool)\.0\.")


def torch_reference(case, out_path):
    import torch
    from refinenet.models.blocks import Bottleneck
    from refinenet.models.refinenet import RefineNet

    from benchmarks.parity.torch_side import (
        package_version,
        random_inputs,
        randomize_batch_norms,
        write_reference,
    )

    depth, layers = LAYERS[case]
    torch.manual_seed(0)
    model = RefineNet(Bottleneck, layers, num_layers=depth, num_classes=NUM_CLASSES)
    randomize_batch_norms(model)
    write_reference(
        out_path,
        model,
        random_inputs(SIZES),
        mode="torch",
        meta={
            "reference": f"refinenet {package_version('refinenet')} RefineNet(Bottleneck, {layers})",
            "resize": "bilinear align_corners=True inside; outputs compared at stride 4",
        },
    )


def keras_name(torch_prefix):
    """Our layer name for a torch module prefix (see the module docstring)."""
    return SEQUENTIAL.sub(r"\1_", torch_prefix).replace(".", "_")


def keras_check(case, npz):
    import keras
    import numpy as np

    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference
    from keras_deeplab import create_model

    state, inputs, outputs, meta = load_reference(npz)
    model = create_model(case, num_classes=NUM_CLASSES)
    prefixes = sorted({key.rsplit(".", 1)[0] for key in state})
    copy_weights(model, state, {keras_name(p): p for p in prefixes})
    stride4 = keras.Model(model.input, model.get_layer("clf_conv").output)
    ours = [np.asarray(stride4(x, training=False)) for x in inputs]
    return {
        **compare(ours, outputs, inputs),
        "reference": meta["reference"],
        "compared": "stride-4 logits (clf_conv)",
        "resize": meta["resize"],
    }
