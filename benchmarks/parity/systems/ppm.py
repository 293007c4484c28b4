"""PSPNet's pyramid pooling head and the torch-layout ResNets, against `mit-semseg` / torchvision.

Cases (seeded random weights, random BatchNorm statistics, eval mode; odd input sizes):

* `ppm_head`: `mit_semseg.models.models.PPM(fc_dim=2048, num_class=21)` on random 2048-channel
  feature maps against our `"ppm"` head built with the CSAIL conventions: `ppm_bins=(1, 2, 3, 6)`
  (CSAIL / semseg concat order `[x, 1, 2, 3, 6]`; the Caffe net's is `[x, 6, 3, 2, 1]`, our
  default) and `ppm_align_corners=False` (CSAIL's `interpolate(align_corners=False)`; Caffe and
  semseg use True, our default). Output: the reference's own `log_softmax` of the logits.
* `resnet50_tv_os8`: `torchvision.models.resnet50(replace_stride_with_dilation=[False, True,
  True])` trunk (`layer4` output) against `resnet50_tv` at output stride 8.
* `resnet50_deep_os32`: the CSAIL deep-stem ResNet-50 (`mit_semseg.models.resnet.resnet50` in
  `models.Resnet`) against `resnet50_deep` at output stride 32 (UperNet's trunk).
* `pspnet50_csail`: the same trunk dilated the way semseg's `model/pspnet.py` does it (every
  `conv2` of layer3 at dilation 2, of layer4 at 4, `downsample.0` stride 1; not CSAIL's
  `ResnetDilated`, which contracts the first block) + `PPMDeepsup` against our `pspnet50` with
  `ppm_bins=(1, 2, 3, 6)`, `ppm_align_corners=False`, `aux_filters=512` (CSAIL's deep-sup
  width; semseg's is 256); main and auxiliary `log_softmax` at stride 8 (before any final
  resize).

Keras layer names: the backbones' are the torch keys with "." -> "_"; the PPM's are mapped
below (`ppm.{i}.1/2` -> `ppm_bin{n}_conv/bn`, `conv_last.0/1/4` -> `psp_bottleneck_conv/bn`,
`psp_logits`, `cbr_deepsup.0/1` -> `aux_conv/bn`, `conv_last_deepsup` -> `aux_logits`).
"""

CASES = ["ppm_head", "resnet50_tv_os8", "resnet50_deep_os32", "pspnet50_csail"]
NUM_CLASSES = 21
SYNC_BN_BUFFERS = ("._tmp_running_mean", "._tmp_running_var", "._running_iter")
BINS = (1, 2, 3, 6)
FEATURE_SIZES = [(13, 17), (9, 23)]
IMAGE_SIZES = {
    "resnet50_tv_os8": [(65, 97), (67, 93)],
    "resnet50_deep_os32": [(65, 97), (96, 130)],
    "pspnet50_csail": [(65, 97), (73, 57)],
}


def _head_mapping(prefix="", deepsup=False):
    mapping = {}
    for i, n in enumerate(BINS):
        mapping[f"ppm_bin{n}_conv"] = f"{prefix}ppm.{i}.1"
        mapping[f"ppm_bin{n}_bn"] = f"{prefix}ppm.{i}.2"
    mapping["psp_bottleneck_conv"] = f"{prefix}conv_last.0"
    mapping["psp_bottleneck_bn"] = f"{prefix}conv_last.1"
    mapping["psp_logits"] = f"{prefix}conv_last.4"
    if deepsup:
        mapping["aux_conv"] = f"{prefix}cbr_deepsup.0"
        mapping["aux_bn"] = f"{prefix}cbr_deepsup.1"
        mapping["aux_logits"] = f"{prefix}conv_last_deepsup"
    return mapping


def _trunk_mapping(state, prefix=""):
    """`{keras layer: torch prefix}` for every backbone tensor of `state` under `prefix`."""
    prefixes = {key.rsplit(".", 1)[0] for key in state if key.startswith(prefix)}
    heads = ("ppm.", "conv_last", "cbr_deepsup")
    return {
        p[len(prefix) :].replace(".", "_"): p
        for p in prefixes
        if not p[len(prefix) :].startswith(heads)
    }


def _semseg_dilate(trunk):
    """semseg `PSPNet.__init__`: conv2 of layer3/4 at dilation 2/4, no stride (every block)."""
    for layer, rate in ((trunk.layer3, 2), (trunk.layer4, 4)):
        for name, module in layer.named_modules():
            if "conv2" in name:
                module.dilation, module.padding, module.stride = (rate, rate), (rate, rate), (1, 1)
            elif "downsample.0" in name:
                module.stride = (1, 1)


def torch_reference(case, out_path):
    import numpy as np
    import torch
    from mit_semseg.models import models as mit_models
    from mit_semseg.models import resnet as mit_resnet

    from benchmarks.parity.torch_side import (
        normalize,
        package_version,
        random_inputs,
        randomize_batch_norms,
        write_reference,
    )

    torch.manual_seed(0)
    mit = f"mit-semseg {package_version('mit-semseg')}"
    if case == "ppm_head":
        model = mit_models.PPM(num_class=NUM_CLASSES, fc_dim=2048, use_softmax=False)
        randomize_batch_norms(model)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((1, h, w, 2048)).astype(np.float32) for h, w in FEATURE_SIZES]
        meta = {
            "reference": f"{mit} models.PPM (log_softmax output)",
            "resize": "PPM branches bilinear align_corners=False",
        }
        write_reference(out_path, model, inputs, forward=lambda m, t: m([t]), meta=meta)
        return
    if case == "resnet50_tv_os8":
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter

        resnet = torchvision.models.resnet50(
            weights=None, replace_stride_with_dilation=[False, True, True]
        )
        model = IntermediateLayerGetter(resnet, {"layer4": "out"})
        randomize_batch_norms(model)
        meta = {
            "reference": f"torchvision {torchvision.__version__} resnet50 "
            "replace_stride_with_dilation=[False, True, True], layer4",
            "resize": "none",
        }
        write_reference(
            out_path,
            model,
            random_inputs(IMAGE_SIZES[case]),
            mode="torch",
            forward=lambda m, t: m(t)["out"],
            meta=meta,
        )
        return
    trunk = mit_models.Resnet(mit_resnet.resnet50(pretrained=False))
    if case == "resnet50_deep_os32":
        randomize_batch_norms(trunk)
        meta = {"reference": f"{mit} models.Resnet(resnet50), layer4", "resize": "none"}
        write_reference(
            out_path,
            trunk,
            random_inputs(IMAGE_SIZES[case]),
            mode="torch",
            forward=lambda m, t: m(t)[0],
            meta=meta,
        )
        return
    # pspnet50_csail
    _semseg_dilate(trunk)
    net = torch.nn.Module()
    net.encoder = trunk
    net.decoder = mit_models.PPMDeepsup(num_class=NUM_CLASSES, fc_dim=2048, use_softmax=False)
    randomize_batch_norms(net)
    net.eval()

    def forward(m, t):
        return m.decoder(m.encoder(t, return_feature_maps=True))

    inputs = random_inputs(IMAGE_SIZES[case])
    meta = {
        "reference": f"{mit} models.Resnet(resnet50) dilated as semseg PSPNet + PPMDeepsup",
        "resize": "PPM branches bilinear align_corners=False; outputs at stride 8",
    }
    write_reference(
        out_path, net, inputs, mode="torch", forward=lambda m, t: forward(m, t)[0], meta=meta
    )
    aux = {}
    for i, x in enumerate(inputs):
        tensor = torch.from_numpy(np.ascontiguousarray(normalize(x, "torch").transpose(0, 3, 1, 2)))
        with torch.no_grad():
            aux[f"aux{i}"] = forward(net, tensor)[1].numpy().transpose(0, 2, 3, 1)
    with np.load(out_path) as data:
        arrays = dict(data)
    np.savez(out_path, **arrays, **aux)


def _log_softmax(model, x):
    import tensorflow as tf

    return tf.nn.log_softmax(model.predict(x, verbose=0), axis=-1).numpy()


def keras_check(case, npz):
    import keras
    import numpy as np

    from benchmarks.parity.convert import copy_weights
    from benchmarks.parity.reference import compare, load_reference
    from keras_deeplab import create_model
    from keras_deeplab.backbones import get_backbone
    from keras_deeplab.heads.ppm import PPM_OPTIONS, ppm_head
    from keras_deeplab.layers import Preprocessing

    state, inputs, references, meta = load_reference(npz)
    # mit-semseg's SynchronizedBatchNorm2d keeps bookkeeping buffers for its cross-GPU
    # statistics (`_tmp_running_mean/var`, `_running_iter`); eval mode never reads them.
    state = {k: v for k, v in state.items() if not k.endswith(SYNC_BN_BUFFERS)}
    extra = {}
    if case == "ppm_head":
        features = keras.Input((None, None, 2048))
        args = {
            **PPM_OPTIONS,
            "ppm_bins": BINS,
            "ppm_align_corners": False,
            "num_classes": NUM_CLASSES,
        }
        model = keras.Model(features, ppm_head(features, {}, args))
        copied = copy_weights(model, state, _head_mapping())
        outputs = [_log_softmax(model, x) for x in inputs]
    elif case in ("resnet50_tv_os8", "resnet50_deep_os32"):
        name, stride = ("resnet50_tv", 8) if case == "resnet50_tv_os8" else ("resnet50_deep", 32)
        images = keras.Input((None, None, 3))
        backbone = get_backbone(name, output_stride=stride)
        model = keras.Model(images, backbone(Preprocessing("torch")(images))["final"])
        copied = copy_weights(model, state, _trunk_mapping(state))
        outputs = [model.predict(x, verbose=0) for x in inputs]
    else:  # pspnet50_csail
        full = create_model(
            "pspnet50",
            num_classes=NUM_CLASSES,
            ppm_bins=BINS,
            ppm_align_corners=False,
            aux_filters=512,
        )
        mapping = {**_trunk_mapping(state, "encoder."), **_head_mapping("decoder.", deepsup=True)}
        copied = copy_weights(full, state, mapping)
        training_graph = full._training_graph  # the graph with the auxiliary head
        logits = keras.Model(full.input, full.get_layer("psp_logits").output)
        aux = keras.Model(training_graph.input, training_graph.get_layer("aux_logits").output)
        outputs = [_log_softmax(logits, x) for x in inputs]
        with np.load(npz) as data:
            aux_references = [data[f"aux{i}"] for i in range(len(inputs))]
        aux_result = compare([_log_softmax(aux, x) for x in inputs], aux_references, inputs)
        extra = {
            "aux_max_abs_diff": aux_result["max_abs_diff"],
            "aux_logit_scale": aux_result["logit_scale"],
        }
    result = {
        **compare(outputs, references, inputs),
        "reference": meta["reference"],
        "resize": meta["resize"],
        "tensors_copied": copied,
        **extra,
    }
    keras.backend.clear_session()
    return result
