"""Dense CRF wrapper (`keras_deeplab.crf`) against a brute-force NumPy mean-field oracle.

The oracle implements the DeepLab / Krähenbühl energy exactly: unary `-log max(p, 1e-5)`,
Potts pairwise `bi_w * k_bilateral + pos_w * k_gaussian` with exact Gaussian kernels
(positions in pixels, RGB 0..255), each kernel matrix normalised symmetrically
(`D^-1/2 K D^-1/2`, the pydensecrf default, self term included), and the parallel
mean-field update `Q <- softmax(-U + sum_m w_m K_m Q)` started from `softmax(-U)`.
pydensecrf filters with a permutohedral lattice (an approximation of the Gaussians), so the
comparison is on labels (>= 98 % equal) and on marginals (mean |dQ| <= 0.01). The same
comparison with swapped parameters fails, so the check does see how they are passed.
"""

import os
import sys

import numpy as np
import pytest
from conftest import smooth_image, toy_model

from keras_deeplab import crf
from keras_deeplab.crf import CRF_PRESETS, batch_crf, dense_crf, dense_crf_labels
from keras_deeplab.evaluation import Segmenter

LABEL_AGREEMENT = 0.98
MEAN_ABS_TOLERANCE = 0.01
# Well-conditioned at 12x16 px: kernels span a few pixels / tens of grey levels.
SMALL = {
    "bi_w": 6.0,
    "bi_xy_std": 3.0,
    "bi_rgb_std": 25.0,
    "pos_w": 1.0,
    "pos_xy_std": 1.5,
    "iterations": 10,
}


@pytest.fixture
def needs_crf():
    """Skips without pydensecrf, except under CI=true where it must be installed."""
    if crf.is_available():
        return
    reason = "pydensecrf is not installed (pip install 'keras-deeplab[crf]')"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must install it (dev extra).")
    pytest.skip(reason)


def scene(seed, height=12, width=16, num_classes=3, noise=1.2):
    """Three coloured regions, noisy image, and probabilities that are right ~60 % of the time."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    truth = np.zeros((height, width), np.int64)
    truth[xx > width // 2] = 1
    truth[(yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 4) ** 2] = 2
    colours = np.array([[200, 40, 40], [40, 60, 210], [60, 200, 80]])
    image = np.clip(colours[truth] + rng.normal(0, 15, (height, width, 3)), 0, 255)
    logits = rng.normal(0, noise, (height, width, num_classes))
    logits[yy, xx, truth] += 1.0
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    return image.astype(np.uint8), probs.astype(np.float32), truth


def oracle_crf(image, probs, bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std, iterations):
    height, width, num_classes = probs.shape
    unary = -np.log(np.clip(probs.astype(np.float64), 1e-5, None)).reshape(-1, num_classes)
    yy, xx = np.mgrid[:height, :width]
    position = np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)
    colour = image.reshape(-1, 3).astype(np.float64)

    def normalised_kernel(features):
        sq = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
        kernel = np.exp(-0.5 * sq)
        norm = 1.0 / np.sqrt(kernel.sum(1))
        return norm[:, None] * kernel * norm[None, :]

    bilateral = normalised_kernel(np.concatenate([position / bi_xy_std, colour / bi_rgb_std], 1))
    gaussian = normalised_kernel(position / pos_xy_std)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(-unary)
    for _ in range(iterations):
        q = softmax(-unary + bi_w * (bilateral @ q) + pos_w * (gaussian @ q))
    return q.reshape(height, width, num_classes)


def agreement(q, reference):
    labels = float((q.argmax(-1) == reference.argmax(-1)).mean())
    return labels, float(np.abs(q - reference).mean())


@pytest.mark.parametrize(
    "params, size, seed",
    [(SMALL, (12, 16), s) for s in range(4)]
    + [("deeplabv1_largefov", (32, 40), s) for s in range(2)],
)
def test_matches_bruteforce_mean_field(params, size, seed, needs_crf):
    image, probs, _ = scene(seed, *size)
    values = CRF_PRESETS[params] if isinstance(params, str) else params
    q = dense_crf(image, probs, params)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-4)
    labels, mean_abs = agreement(q, oracle_crf(image, probs, **values))
    assert labels >= LABEL_AGREEMENT, labels
    assert mean_abs <= MEAN_ABS_TOLERANCE, mean_abs
    # The CRF changed something: it is not the argmax of the unary.
    assert (q.argmax(-1) != probs.argmax(-1)).mean() > 0.1


@pytest.mark.parametrize(
    "wrong",
    [
        {"bi_xy_std": SMALL["bi_rgb_std"], "bi_rgb_std": SMALL["bi_xy_std"]},  # sigmas swapped
        {"bi_w": SMALL["pos_w"], "pos_w": SMALL["bi_w"]},  # weights swapped
    ],
)
def test_bruteforce_comparison_detects_wrong_parameters(wrong, needs_crf):
    failures = 0
    for seed in range(4):
        image, probs, _ = scene(seed)
        q = dense_crf(image, probs, SMALL)
        labels, mean_abs = agreement(q, oracle_crf(image, probs, **{**SMALL, **wrong}))
        failures += labels < LABEL_AGREEMENT or mean_abs > MEAN_ABS_TOLERANCE
    assert failures >= 3


def test_crf_raises_accuracy_on_noisy_case(needs_crf):
    image, probs, truth = scene(0, 48, 64, noise=1.5)
    before = (probs.argmax(-1) == truth).mean()
    after = (dense_crf_labels(image, probs, "deeplabv1_largefov") == truth).mean()
    assert before < 0.6
    assert after > 0.95
    after_v2 = (dense_crf_labels(image, probs, "deeplabv2_resnet101") == truth).mean()
    assert after_v2 > before + 0.15


def test_presets_and_overrides(needs_crf):
    image, probs, _ = scene(1)
    assert CRF_PRESETS["deeplabv1_largefov"] == {
        "iterations": 10,
        "bi_w": 4.0,
        "bi_xy_std": 121.0,
        "bi_rgb_std": 5.0,
        "pos_w": 3.0,
        "pos_xy_std": 3.0,
    }
    assert CRF_PRESETS["deeplabv2_resnet101"] == {
        "iterations": 10,
        "bi_w": 4.0,
        "bi_xy_std": 67.0,
        "bi_rgb_std": 3.0,
        "pos_w": 3.0,
        "pos_xy_std": 1.0,
    }
    by_name = dense_crf(image, probs, "deeplabv1_largefov")
    by_dict = dense_crf(image, probs, dict(CRF_PRESETS["deeplabv1_largefov"]))
    np.testing.assert_array_equal(by_name, by_dict)
    # Default preset is v2 ResNet-101; keyword overrides win.
    np.testing.assert_array_equal(
        dense_crf(image, probs), dense_crf(image, probs, "deeplabv2_resnet101")
    )
    zero = dense_crf(image, probs, iterations=0)
    np.testing.assert_allclose(
        zero,
        np.clip(probs, 1e-5, None) / np.clip(probs, 1e-5, None).sum(-1, keepdims=True),
        atol=1e-5,
    )


def test_input_validation(needs_crf):
    image, probs, _ = scene(0)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        dense_crf(image[..., :2].copy(), probs)
    with pytest.raises(ValueError, match="image size"):
        dense_crf(image, probs[:-1])
    with pytest.raises(ValueError, match="Unknown CRF preset"):
        dense_crf(image, probs, "deeplabv9")
    with pytest.raises(ValueError, match="Unknown CRF parameters"):
        dense_crf(image, probs, sxy=3)
    with pytest.raises(ValueError, match="bi_rgb_std"):
        dense_crf(image, probs, bi_rgb_std=0)
    # Non-contiguous views are accepted (copied), with the same result.
    flipped = image[:, ::-1]
    assert not flipped.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(
        dense_crf(flipped, probs[:, ::-1]), dense_crf(flipped.copy(), probs[:, ::-1].copy())
    )


def test_missing_pydensecrf_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs, _ = scene(0)
    with pytest.raises(ImportError, match=r"keras-deeplab\[crf\]"):
        dense_crf(image, probs)
    assert not crf.is_available()


def test_batch_crf_serial_and_processes_agree(needs_crf):
    scenes = [scene(seed, 12 + seed, 16) for seed in range(3)]
    images = [s[0] for s in scenes]
    probs = [s[1] for s in scenes]
    serial = batch_crf(images, probs, "deeplabv1_largefov", processes=1)
    parallel = batch_crf(images, probs, "deeplabv1_largefov", processes=2)
    assert [q.shape for q in parallel] == [p.shape for p in probs]
    for a, b, image, prob in zip(serial, parallel, images, probs, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, dense_crf(image, prob, "deeplabv1_largefov"))
    with pytest.raises(ValueError, match="2 images but 3"):
        batch_crf(images[:2], probs)


def test_segmenter_crf_option(needs_crf):
    model = toy_model()
    images = [smooth_image(33, 45), smooth_image(29, 37, 1)]
    plain = Segmenter(model, flip=True, output_stride=4).predict_proba(images)
    refined = Segmenter(model, flip=True, output_stride=4, crf="deeplabv1_largefov")
    for img, probs, q in zip(images, plain, refined.predict_proba(images), strict=True):
        np.testing.assert_allclose(q, dense_crf(img, probs, "deeplabv1_largefov"), atol=1e-6)
        assert (q.argmax(-1) != probs.argmax(-1)).any()
    # Float images in 0..255 are rounded to uint8 for the CRF.
    from_float = refined.predict([images[0].astype(np.float32)])[0]
    np.testing.assert_array_equal(from_float, refined.predict([images[0]])[0])
