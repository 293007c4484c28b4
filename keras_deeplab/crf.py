"""Fully connected (dense) CRF post-processing, as in DeepLab v1/v2.

Chen et al., ICLR 2015 (arXiv:1412.7062) and TPAMI 2017 (arXiv:1606.00915), §3.4 / Eq. 2-3,
with the mean-field inference of Krähenbühl & Koltun (NIPS 2011) through `pydensecrf`
(install the `crf` extra: `pip install "keras-deeplab[crf]"`, which pulls the maintained
fork `pydensecrf2`; it imports as `pydensecrf`).

Energy: unary `-log P(x_i)` plus the Potts pairwise term

    w1 * exp(-|p_i - p_j|^2 / 2 bi_xy_std^2 - |I_i - I_j|^2 / 2 bi_rgb_std^2)
      + w2 * exp(-|p_i - p_j|^2 / 2 pos_xy_std^2)

(positions in pixels, colours in 0..255 RGB). Parameter names follow the official DeepLab
`dense_inference` flags: `bi_w` (w1), `bi_xy_std` (sigma_alpha), `bi_rgb_std` (sigma_beta),
`pos_w` (w2), `pos_xy_std` (sigma_gamma), `iterations` (mean-field steps, 10).

Unary: `-log(max(p, clip))` from probabilities, `clip=1e-5` as pydensecrf's
`unary_from_softmax` and the deeplab-pytorch reproduction of the published CRF gains. The
official C++ used `-logit`, which for a single softmax equals `-log p` up to a per-pixel
constant that mean-field normalisation cancels, i.e. the unclipped form (`clip=None` uses
the smallest positive float32 instead). Probabilities are what multi-scale / flip
averaging produces, so that is what we take.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

# name -> parameters (sources: the DeepLab v1/v2 releases and reproductions listed per preset).
CRF_PRESETS = {
    # DeepLab-LargeFOV (VGG-16, v1), the values repeated by the v1 reproductions.
    "deeplabv1_largefov": {
        "iterations": 10,
        "bi_w": 4.0,
        "bi_xy_std": 121.0,
        "bi_rgb_std": 5.0,
        "pos_w": 3.0,
        "pos_xy_std": 3.0,
    },
    # DeepLab-v2 ResNet-101 on VOC (official release page, deeplab-pytorch configs).
    "deeplabv2_resnet101": {
        "iterations": 10,
        "bi_w": 4.0,
        "bi_xy_std": 67.0,
        "bi_rgb_std": 3.0,
        "pos_w": 3.0,
        "pos_xy_std": 1.0,
    },
    # Defaults of the official `densecrf/refine_pascal_v4/dense_inference.cpp`.
    "densecrf_default": {
        "iterations": 10,
        "bi_w": 5.0,
        "bi_xy_std": 70.0,
        "bi_rgb_std": 5.0,
        "pos_w": 3.0,
        "pos_xy_std": 3.0,
    },
}
DEFAULT_PRESET = "deeplabv2_resnet101"
PARAMETERS = ("iterations", "bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std")
_MIN_CLIP = float(np.finfo(np.float32).tiny)

_INSTALL_HINT = (
    "The dense CRF needs pydensecrf: pip install 'keras-deeplab[crf]' (or "
    "pip install pydensecrf2==1.1; it builds from source with a C++ compiler, Python 3.11/3.12)."
)


def _densecrf_module():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from None
    return dcrf


def is_available():
    """True when pydensecrf can be imported."""
    try:
        _densecrf_module()
    except ImportError:
        return False
    return True


def resolve_params(crf=None, **overrides):
    """Full CRF parameters from a preset name / dict / None (default preset) plus overrides."""
    if crf is None:
        params = dict(CRF_PRESETS[DEFAULT_PRESET])
    elif isinstance(crf, str):
        if crf not in CRF_PRESETS:
            raise ValueError(f"Unknown CRF preset {crf!r}; available: {sorted(CRF_PRESETS)}.")
        params = dict(CRF_PRESETS[crf])
    elif isinstance(crf, dict):
        params = dict(CRF_PRESETS[DEFAULT_PRESET])
        params.update(crf)
    else:
        raise ValueError(
            f"crf must be None, a preset name {sorted(CRF_PRESETS)} or a dict; got {crf!r}."
        )
    params.update(overrides)
    unknown = sorted(set(params) - set(PARAMETERS) - {"clip"})
    if unknown:
        raise ValueError(f"Unknown CRF parameters {unknown}; allowed: {list(PARAMETERS)} + clip.")
    iterations = params["iterations"]
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"CRF iterations must be a non-negative integer; got {iterations!r}.")
    params["iterations"] = int(iterations)
    for key in ("bi_xy_std", "bi_rgb_std", "pos_xy_std"):
        if not float(params[key]) > 0:
            raise ValueError(f"CRF {key} must be > 0; got {params[key]!r}.")
    for key in ("bi_w", "pos_w"):
        if not float(params[key]) >= 0:
            raise ValueError(f"CRF {key} must be >= 0; got {params[key]!r}.")
    return params


def _check_inputs(image, probs):
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.dtype != np.uint8:
        raise ValueError(
            f"dense_crf needs the original RGB image as uint8 [H, W, 3]; got dtype {image.dtype}. "
            "Pass the image before normalisation (e.g. np.asarray(PIL.Image.open(f).convert('RGB')))."
        )
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"dense_crf needs an RGB image [H, W, 3]; got shape {image.shape}.")
    if probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"probs must be [H, W, C] at the image size {image.shape[:2]}; got {probs.shape} "
            "(resize the model's probabilities to the image size first)."
        )
    if probs.shape[-1] < 2:
        raise ValueError(f"probs needs at least 2 classes; got {probs.shape[-1]}.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative (softmax probabilities).")
    return np.ascontiguousarray(image), probs


def dense_crf(image, probs, crf=None, *, clip=1e-5, **params):
    """Refines class probabilities with a dense CRF (pydensecrf mean-field inference).

    Args:
        image: the original RGB image, uint8 [H, W, 3] (not normalised).
        probs: class probabilities [H, W, C] at the image size (e.g. averaged softmax).
        crf: None (preset `"deeplabv2_resnet101"`), a preset name of `CRF_PRESETS`, or a
            dict of parameters.
        clip: probabilities are clipped below at `clip` before `-log` (1e-5 as pydensecrf's
            `unary_from_softmax`; None: float32 tiny, the unclipped official form).
        **params: overrides: `iterations`, `bi_w`, `bi_xy_std`, `bi_rgb_std`, `pos_w`,
            `pos_xy_std`.

    Returns:
        The CRF marginals, float32 [H, W, C] (each pixel sums to 1).

    Example:
        >>> q = dense_crf(image_uint8, probs, "deeplabv1_largefov")
        >>> labels = q.argmax(-1)
    """
    params = resolve_params(crf, **params)
    clip = params.pop("clip", clip)
    image, probs = _check_inputs(image, probs)
    dcrf = _densecrf_module()
    height, width, num_classes = probs.shape
    low = _MIN_CLIP if clip is None else float(clip)
    unary = -np.log(np.clip(probs.astype(np.float32), low, None))
    unary = np.ascontiguousarray(unary.reshape(-1, num_classes).T, dtype=np.float32)
    model = dcrf.DenseCRF2D(width, height, num_classes)
    model.setUnaryEnergy(unary)
    model.addPairwiseGaussian(sxy=float(params["pos_xy_std"]), compat=float(params["pos_w"]))
    model.addPairwiseBilateral(
        sxy=float(params["bi_xy_std"]),
        srgb=float(params["bi_rgb_std"]),
        rgbim=image if image.flags.writeable else image.copy(),  # pydensecrf needs writable
        compat=float(params["bi_w"]),
    )
    marginals = np.asarray(model.inference(params["iterations"]), dtype=np.float32)
    return np.ascontiguousarray(marginals.reshape(num_classes, height, width).transpose(1, 2, 0))


def dense_crf_labels(image, probs, crf=None, **params):
    """`dense_crf(...).argmax(-1)` as int32 [H, W]."""
    return dense_crf(image, probs, crf, **params).argmax(-1).astype(np.int32)


def _crf_job(args):
    image, probs, params = args
    return dense_crf(image, probs, params)


def batch_crf(images, probs, crf=None, processes=None, **params):
    """`dense_crf` over several images, in worker processes.

    Args:
        images: sequence of uint8 [H_i, W_i, 3] images.
        probs: sequence of [H_i, W_i, C] probabilities.
        crf: preset name, dict or None (see `dense_crf`).
        processes: worker processes; None: `min(len(images), os.cpu_count())`. 1 (or a single
            image) runs serially in this process.
        **params: parameter overrides.

    Returns:
        list of float32 [H_i, W_i, C] marginals, in input order.

    Workers use the "spawn" start method (safe with TensorFlow's threads in the parent); each
    worker imports the package once, so use processes only when the CRF time (about 2 s for
    513x513x21) outweighs that start-up. Scripts must guard their entry point with
    `if __name__ == "__main__":`.
    """
    images = list(images)
    probs = list(probs)
    if len(images) != len(probs):
        raise ValueError(f"got {len(images)} images but {len(probs)} probability maps.")
    params = resolve_params(crf, **params)
    for image, prob in zip(images, probs, strict=True):
        _check_inputs(image, prob)
    _densecrf_module()
    if processes is None:
        processes = min(len(images), os.cpu_count() or 1)
    processes = max(1, int(processes))
    jobs = [(image, prob, params) for image, prob in zip(images, probs, strict=True)]
    if processes == 1 or len(jobs) <= 1:
        return [_crf_job(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context) as pool:
        return list(pool.map(_crf_job, jobs))
