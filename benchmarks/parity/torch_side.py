"""The torch side of the parity harness: runs in `benchmarks/.venv-parity` only.

`benchmarks/.venv-parity/bin/python -m benchmarks.parity.torch_side SYSTEM CASE OUT.npz` calls
`SYSTEM.torch_reference(CASE, OUT.npz)` (run from the repository root; the driver does it).
`... -m benchmarks.parity.torch_side --check-imports` imports every reference package and builds
one model of each (the last step of `make parity-venv`).

Helpers for the system modules' `torch_reference` (torch is imported inside them):
`random_inputs`, `randomize_batch_norms`, `normalize`, `run_nhwc`, `numpy_state`,
`write_reference`. `benchmarks/parity/stubs` (tiny stand-ins for the references' dataset
packages) goes on `sys.path` after the venv's own packages.
"""

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.parity.reference import save_reference

STUBS = Path(__file__).resolve().parent / "stubs"
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def random_inputs(sizes, seed=0, channels=3):
    """NHWC float32 images uniform in [0, 255), one per `(H, W)` of `sizes` (batch 1)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (1, h, w, channels)).astype(np.float32) for h, w in sizes]


def randomize_batch_norms(model, seed=0):
    """Random affine parameters and running statistics in every BatchNorm of `model`.

    gamma in [0.5, 1.5), beta ~ N(0, 0.1), mean ~ N(0, 0.1), var in [0.5, 1.5): torch's
    defaults (1, 0, 0, 1) would make a BN an identity and hide a conversion mistake.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                if module.track_running_stats:
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model


def normalize(x, mode):
    """The input normalisation of `keras_deeplab.layers.Preprocessing(mode)`, on NHWC numpy.

    Modes: "torch" ((x/255 - mean) / std, RGB), "caffe" (BGR minus the BGR mean), "bgr" (BGR,
    0..255), "unit" (x/255), "symmetric" (x/127.5 - 1), None (unchanged).
    """
    x = np.asarray(x, np.float32)
    if mode is None:
        return x
    if mode == "torch":
        return ((x / 255.0 - np.float32(TORCH_RGB_MEAN)) / np.float32(TORCH_RGB_STD)).astype(
            np.float32
        )
    if mode == "caffe":
        return (x[..., ::-1] - np.float32(CAFFE_BGR_MEAN)).astype(np.float32)
    if mode == "bgr":
        return np.ascontiguousarray(x[..., ::-1])
    if mode == "unit":
        return x / np.float32(255.0)
    if mode == "symmetric":
        return x / np.float32(127.5) - np.float32(1.0)
    raise ValueError(
        f"normalize: mode={mode!r}; allowed: 'torch', 'caffe', 'bgr', 'unit', 'symmetric', None"
    )


def run_nhwc(model, x, mode=None, forward=None):
    """Runs `model` (eval mode, no grad) on NHWC `x` after `normalize(x, mode)`; NHWC float32 out.

    `forward(model, nchw_tensor) -> tensor` picks the logits when the model returns more
    (e.g. `lambda m, t: m(t)["out"]` for torchvision). torch's default float32 is used.
    """
    import torch

    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(normalize(x, mode).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        out = forward(model, tensor) if forward else model(tensor)
    return out.detach().cpu().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def numpy_state(model):
    """`{key: numpy array}` of `model.state_dict()` (parameters and buffers)."""
    return {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}


def write_reference(out_path, model, inputs, mode=None, forward=None, meta=None):
    """Runs `model` on `inputs` (NHWC, see `run_nhwc`) and writes the reference file.

    `meta` gets `torch` (version) and `input_normalization` (`mode`) added. Returns the outputs.
    """
    import torch

    outputs = [run_nhwc(model, x, mode, forward) for x in inputs]
    meta = {"torch": torch.__version__, "input_normalization": mode, **(meta or {})}
    save_reference(out_path, numpy_state(model), inputs, outputs, meta)
    return outputs


def package_version(name):
    """The installed version of distribution `name` ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def system_module(name):
    """The system module `name` (`benchmarks.parity.systems.<name>`, or a dotted module path)."""
    return importlib.import_module(name if "." in name else f"benchmarks.parity.systems.{name}")


def check_imports():
    """Imports every reference package and builds one model of each; prints what was built."""
    import torch
    import torchvision

    torch.manual_seed(0)
    built = {}
    from torchvision.models.segmentation import fcn_resnet50

    built["torchvision fcn_resnet50"] = fcn_resnet50(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=21
    )
    import torchfcn

    built["torchfcn FCN8s"] = torchfcn.models.FCN8s(n_class=21)
    from mit_semseg.models import models as semseg

    built["mit_semseg UPerNet"] = semseg.UPerNet(
        num_class=150, fc_dim=2048, use_softmax=False, fpn_dim=512
    )
    built["mit_semseg PPMDeepsup"] = semseg.PPMDeepsup(num_class=150, fc_dim=2048)
    from refinenet.models import refinenet as rf

    # pretrained=None: any other value (False included) downloads weights.
    built["refinenet RefineNet-50"] = rf.refinenet50(num_classes=21, pretrained=None)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    for dist in ("torchfcn", "mit-semseg", "refinenet"):
        print(f"{dist} {package_version(dist)}")
    for name, model in built.items():
        count = sum(p.numel() for p in model.parameters())
        print(f"built {name}: {count:,} parameters")


def forbid_downloads():
    """Makes every download path of torch and urllib raise: references get seeded weights only.

    (mit_semseg's `ModelBuilder.build_encoder(weights="")` and refinenet's `pretrained=` other
    than None would otherwise fetch ImageNet weights.)
    """
    import urllib.request

    def refuse(url, *args, **kwargs):
        raise RuntimeError(
            f"parity: download of {getattr(url, 'full_url', url)!r} refused; build the reference "
            f"without pretrained weights (seeded random weights only)"
        )

    urllib.request.urlopen = urllib.request.urlretrieve = refuse
    try:
        import torch.hub
    except ImportError:  # a numpy-only system
        return
    torch.hub.download_url_to_file = torch.hub.load_state_dict_from_url = refuse


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parity.torch_side",
        description="The torch side of `python -m benchmarks.parity` (runs in the torch venv).",
    )
    parser.add_argument("system", nargs="?", help="system module name (benchmarks/parity/systems)")
    parser.add_argument("case", nargs="?", help="one of the system's CASES")
    parser.add_argument("out", nargs="?", help="the .npz to write")
    parser.add_argument("--check-imports", action="store_true", help="import and build references")
    args = parser.parse_args(argv)
    sys.path.append(str(STUBS))
    forbid_downloads()
    if args.check_imports:
        check_imports()
        return 0
    if not (args.system and args.case and args.out):
        parser.error("SYSTEM, CASE and OUT are required (or --check-imports)")
    module = system_module(args.system)
    if args.case not in module.CASES:
        parser.error(f"case {args.case!r} is not one of {args.system}'s CASES {module.CASES}")
    if importlib.util.find_spec("torch") is not None:  # numpy-only systems exist (tests)
        import torch

        torch.set_num_threads(int(os.environ.get("KERAS_DEEPLAB_PARITY_THREADS", "1")))
    module.torch_reference(args.case, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
