"""UperNet (CSAIL) against pip `mit-semseg` 1.0.0.

Reference: `mit_semseg.models.models.Resnet(mit_semseg.models.resnet.resnet50())` (the deep
64-64-128 stem, stride on the 3x3, undilated; built directly, never through
`ModelBuilder.build_encoder`, which downloads ImageNet weights) + `UPerNet(num_class=150,
fc_dim=2048, fpn_dim=...)`, `torch.manual_seed(0)`, random BatchNorm statistics, eval mode.
Cases: `upernet_resnet50` (fpn_dim 512, what CSAIL's `config/ade20k-resnet50-upernet.yaml`
builds: `arch_decoder: "upernet"`) and `upernet_lite_resnet50` (fpn_dim 256, `upernet_lite`).

`UPerNet.forward` returns `log_softmax` of the stride-4 logits (or their softmax after the
resize at inference); the reference output here is the pre-softmax stride-4 logits
(`conv_last`, captured by a forward hook) resized to the input size with bilinear
`align_corners=False`, CSAIL's inference resize. The Keras side compares its model's output
(stride-4 logits resized with half-pixel centres), so the final resize is checked too.
"""

CASES = ["upernet_resnet50", "upernet_lite_resnet50"]
FPN_DIM = {"upernet_resnet50": 512, "upernet_lite_resnet50": 256}
SIZES = [(65, 97), (97, 129), (64, 96)]
NUM_CLASSES = 150

# torch decoder prefix -> our layer name (`i` = PPM branch / FPN level index).
DECODER = [
    ("ppm_conv.{i}.0", "upernet_ppm_{i}_conv"),
    ("ppm_conv.{i}.1", "upernet_ppm_{i}_bn"),
    ("fpn_in.{i}.0", "upernet_fpn_in_{i}_conv"),
    ("fpn_in.{i}.1", "upernet_fpn_in_{i}_bn"),
    ("fpn_out.{i}.0.0", "upernet_fpn_out_{i}_conv"),
    ("fpn_out.{i}.0.1", "upernet_fpn_out_{i}_bn"),
]
DECODER_FIXED = {
    "ppm_last_conv.0": "upernet_ppm_last_conv",
    "ppm_last_conv.1": "upernet_ppm_last_bn",
    "conv_last.0.0": "upernet_fusion_conv",
    "conv_last.0.1": "upernet_fusion_bn",
    "conv_last.1": "upernet_logits",
}


def torch_reference(case, out_path):
    import torch
    from mit_semseg.models import resnet
    from mit_semseg.models.models import Resnet, UPerNet

    from benchmarks.parity.torch_side import (
        package_version,
        random_inputs,
        randomize_batch_norms,
        write_reference,
    )

    class Segmentation(torch.nn.Module):
        """encoder + decoder; returns the stride-4 logits resized to the input (half-pixel)."""

        def __init__(self, encoder, decoder):
            super().__init__()
            self.encoder, self.decoder = encoder, decoder
            self._logits = None
            decoder.conv_last.register_forward_hook(self._keep)

        def _keep(self, module, args, output):
            self._logits = output

        def forward(self, x):
            self.decoder(self.encoder(x, return_feature_maps=True))
            return torch.nn.functional.interpolate(
                self._logits, size=x.shape[2:], mode="bilinear", align_corners=False
            )

    torch.manual_seed(0)
    encoder = Resnet(resnet.resnet50(pretrained=False))
    decoder = UPerNet(num_class=NUM_CLASSES, fc_dim=2048, use_softmax=False, fpn_dim=FPN_DIM[case])
    model = randomize_batch_norms(Segmentation(encoder, decoder))
    write_reference(
        out_path,
        model,
        random_inputs(SIZES),
        mode="torch",
        meta={
            "reference": f"mit-semseg {package_version('mit-semseg')} Resnet(resnet50()) + "
            f"UPerNet(fpn_dim={FPN_DIM[case]})",
            "resize": "bilinear align_corners=False inside and to the input size",
        },
    )


def keras_name(torch_prefix):
    """Our layer name for a torch module prefix of the `Segmentation` wrapper."""
    part, _, rest = torch_prefix.partition(".")
    if part == "encoder":  # the deep-stem ResNet: torch keys with "." -> "_"
        return rest.replace(".", "_")
    if rest in DECODER_FIXED:
        return DECODER_FIXED[rest]
    for pattern, name in DECODER:
        head, tail = pattern.split("{i}")
        if rest.startswith(head) and rest.endswith(tail):
            index = rest[len(head) : len(rest) - len(tail)]
            if index.isdigit():
                return name.format(i=index)
    raise KeyError(f"no Keras layer for torch module {torch_prefix!r}")


def keras_check(case, npz):
    import numpy as np

    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference
    from keras_deeplab import create_model

    state, inputs, outputs, meta = load_reference(npz)
    # SynchronizedBatchNorm2d's multi-GPU bookkeeping buffers (`_tmp_running_mean`,
    # `_tmp_running_var`, `_running_iter`) take no part in eval mode.
    state = {k: v for k, v in state.items() if not k.rsplit(".", 1)[1].startswith("_")}
    model = create_model(case, num_classes=NUM_CLASSES)
    prefixes = sorted({key.rsplit(".", 1)[0] for key in state})
    copy_weights(model, state, {keras_name(p): p for p in prefixes})
    ours = [np.asarray(model(x, training=False)) for x in inputs]
    return {
        **compare(ours, outputs, inputs),
        "reference": meta["reference"],
        "compared": "logits at the input size (stride-4 logits resized, half-pixel)",
        "resize": meta["resize"],
    }
