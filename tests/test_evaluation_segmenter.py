"""`Segmenter`: padding to k*OS+1, multi-scale / flip fusion, sliding window, batching."""

import keras
import numpy as np
import pytest
from conftest import smooth_image, toy_model

import keras_deeplab
from keras_deeplab.evaluation import (
    OFFICIAL_EVAL_SCALES,
    Segmenter,
    padded_size,
)


def resize_align_corners(array, size):
    """Reference bilinear resize with align_corners=True, in NumPy ([H, W, C])."""
    array = np.asarray(array, np.float64)

    def axis_weights(n_in, n_out):
        pos = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, pos - low

    r0, r1, fr = axis_weights(array.shape[0], size[0])
    c0, c1, fc = axis_weights(array.shape[1], size[1])
    rows = array[r0] * (1 - fr)[:, None, None] + array[r1] * fr[:, None, None]
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def spy_shapes(segmenter):
    shapes = []
    run = segmenter._run_batch

    def recording(batch):
        shapes.append(batch.shape)
        return run(batch)

    segmenter._run_batch = recording
    return shapes


def test_padded_size():
    assert [padded_size(n, 8) for n in (1, 9, 10, 33, 34, 500)] == [1, 9, 17, 33, 41, 505]
    assert padded_size(375, 16) == 385
    assert padded_size(38, 1) == 38


def test_pads_to_k_os_plus_one_and_crops_back():
    model = toy_model()
    img = smooth_image(38, 54)
    seg = Segmenter(model, output_stride=4)
    shapes = spy_shapes(seg)
    probs = seg.predict_proba(img)[0]
    assert shapes == [(1, 41, 57, 3)]
    padded = np.pad(img.astype(np.float32), ((0, 3), (0, 3), (0, 0)), constant_values=127.5)
    expected = softmax(model(padded[None]).numpy()[0, :38, :54])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # Without padding the model's resize grid differs: the padding matters.
    unpadded = softmax(model(img[None].astype(np.float32)).numpy()[0])
    assert np.abs(unpadded - probs).max() > 1e-3


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_multi_scale_matches_reference_on_odd_sizes(fusion):
    model = toy_model(strided=False)
    img = smooth_image(37, 53)
    scales = (0.5, 0.75, 1.25)
    seg = Segmenter(model, scales=scales, fusion=fusion, output_stride=1)
    shapes = spy_shapes(seg)
    probs = seg.predict_proba([img])[0]
    # Official scale_dimension: int((size - 1) * scale + 1).
    assert [s[1:3] for s in shapes] == [(19, 27), (28, 40), (46, 66)]
    per_scale = []
    for scale in scales:
        size = (int(36 * scale + 1), int(52 * scale + 1))
        x = resize_align_corners(img, size).astype(np.float32)
        logits = model(x[None]).numpy()[0]
        per_scale.append(resize_align_corners(logits, (37, 53)))
    if fusion == "mean":
        expected = np.mean([softmax(x) for x in per_scale], axis=0)
    else:
        expected = softmax(np.max(per_scale, axis=0))
    assert probs.shape == (37, 53, 4)
    np.testing.assert_allclose(probs, expected, atol=2e-4)


def test_flip_equivariance():
    model = toy_model()
    img = smooth_image(35, 50)
    mirrored = np.ascontiguousarray(img[:, ::-1])
    seg = Segmenter(model, scales=(0.75, 1.0), flip=True, output_stride=4, batch_size=2)
    a, b = seg.predict_proba([img, mirrored])
    np.testing.assert_allclose(a[:, ::-1], b, atol=1e-6)
    # The model itself is not flip-equivariant, so without flip averaging this fails.
    plain = Segmenter(model, scales=(0.75, 1.0), output_stride=4)
    a, b = plain.predict_proba([img, mirrored])
    assert np.abs(a[:, ::-1] - b).max() > 0.05


def test_flip_averages_both_passes():
    model = toy_model()
    img = smooth_image(33, 41)
    seg = Segmenter(model, flip=True, output_stride=4)
    probs = seg.predict_proba(img)[0]
    direct = softmax(model(img[None].astype(np.float32)).numpy()[0])
    mirrored = softmax(model(img[None, :, ::-1].astype(np.float32)).numpy()[0, :, ::-1])
    np.testing.assert_allclose(probs, 0.5 * (direct + mirrored), atol=1e-5)


def test_sliding_window_equals_full_image_for_a_per_pixel_model():
    model = toy_model(strided=False)
    img = smooth_image(37, 53)
    full = Segmenter(model, output_stride=1).predict_proba(img)[0]
    seg = Segmenter(model, output_stride=1, sliding_window=(17, 23), overlap=1 / 3, batch_size=4)
    shapes = spy_shapes(seg)
    windowed = seg.predict_proba(img)[0]
    np.testing.assert_allclose(windowed, full, atol=1e-5)
    # Rows start at 0, 10, 20 and columns at 0, 15, 30 (evenly spaced, >= 1/3 overlap).
    assert sum(s[0] for s in shapes) == 9
    assert all(s[1:3] == (17, 23) for s in shapes)


def test_sliding_window_with_scales_and_flip_on_strided_model():
    model = toy_model()
    img = smooth_image(45, 70)
    seg = Segmenter(
        model,
        scales=(0.5, 1.25),
        flip=True,
        output_stride=4,
        sliding_window=(33, 33),
        batch_size=3,
    )
    shapes = spy_shapes(seg)
    probs = seg.predict_proba(img)[0]
    assert probs.shape == (45, 70, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert all((h - 1) % 4 == 0 and (w - 1) % 4 == 0 for _, h, w, _ in shapes)
    assert max(h for _, h, _, _ in shapes) <= 33 and max(w for _, _, w, _ in shapes) <= 33
    # The 0.5 view (23x35) needs 1x2 windows, the 1.25 view (56x87) 3x4.
    assert sum(s[0] for s in shapes) == 2 * (2 + 12)
    mirrored = seg.predict_proba(np.ascontiguousarray(img[:, ::-1]))[0]
    np.testing.assert_allclose(probs[:, ::-1], mirrored, atol=1e-6)


def test_batching_does_not_change_results():
    model = toy_model()
    images = [smooth_image(33, 41, 0), smooth_image(40, 29, 1), smooth_image(33, 41, 2)]
    kwargs = {"scales": (0.75, 1.0), "flip": True, "output_stride": 4}
    one = Segmenter(model, batch_size=1, **kwargs)
    many = Segmenter(model, batch_size=3, **kwargs)
    shapes = spy_shapes(many)
    for a, b in zip(one.predict_proba(images), many.predict_proba(images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(s[0] for s in shapes) == 3
    labels = one.predict(np.stack([images[0], images[2]]))
    assert [lab.shape for lab in labels] == [(33, 41), (33, 41)]
    assert labels[0].dtype == np.int32


def test_softmax_output_model():
    logits_model = toy_model(seed=3)
    probs_model = toy_model(seed=3, softmax=True)
    img = smooth_image(33, 45)
    a = Segmenter(logits_model, scales=(0.5, 1.0), output_stride=4).predict_proba(img)[0]
    b = Segmenter(probs_model, scales=(0.5, 1.0), output_stride=4, outputs="softmax")
    np.testing.assert_allclose(a, b.predict_proba(img)[0], atol=1e-5)
    with pytest.raises(ValueError, match="logits or softmax"):
        Segmenter(probs_model, output_stride=4, outputs="sigmoid")


def test_input_checks():
    model = toy_model()
    seg = Segmenter(model, output_stride=4)
    with pytest.raises(ValueError, match="RGB"):
        seg.predict([np.zeros((20, 20, 4), np.uint8)])
    gray = seg.predict(np.full((21, 22), 100, np.uint8))
    assert gray[0].shape == (21, 22)
    with pytest.raises(ValueError, match="output_stride"):
        Segmenter(model)
    with pytest.raises(ValueError, match="fusion"):
        Segmenter(model, output_stride=4, fusion="median")
    with pytest.raises(ValueError, match="sliding_window"):
        Segmenter(model, output_stride=4, sliding_window=(0, 10))
    with pytest.raises(ValueError, match="CRF preset"):
        Segmenter(model, output_stride=4, crf="nope")


def test_images_scaled_to_unit_range_are_refused():
    """A float image in [0, 1] given to a 0..255 model would predict nearly all background."""
    model = toy_model()
    image = np.random.default_rng(0).uniform(0, 1, (21, 21, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"\[0, 1\].*multiply the image by 255"):
        Segmenter(model, output_stride=4).predict([image])
    assert Segmenter(model, output_stride=4).predict([image * 255])[0].shape == (21, 21)
    # models without preprocessing take normalised input (pad_value 0): no check there
    assert Segmenter(model, output_stride=4, pad_value=0.0).predict([image])[0].shape == (21, 21)


def test_builders_output_stride_and_odd_sizes(tmp_path):
    model = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", output_stride=8, num_classes=5)
    assert Segmenter(model).output_stride == 8
    v3plus = keras_deeplab.DeepLabV3Plus(backbone="mobilenetv2", num_classes=3)
    assert Segmenter(v3plus).output_stride == 16
    # The model's output_stride survives a .keras round trip.
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    seg = Segmenter(reloaded, scales=(0.5, 1.0), flip=True, batch_size=2)
    assert seg.output_stride == 8
    shapes = spy_shapes(seg)
    labels = seg.predict([smooth_image(35, 47), smooth_image(50, 33, 1)])
    assert [lab.shape for lab in labels] == [(35, 47), (50, 33)]
    assert all((h - 1) % 8 == 0 and (w - 1) % 8 == 0 for _, h, w, _ in shapes)


def test_msc_model():
    model = keras_deeplab.DeepLabV2(backbone="mobilenetv2_dm05", multi_scale=True, num_classes=3)
    assert Segmenter(model).output_stride == 8
    probs = Segmenter(model).predict_proba(smooth_image(41, 30))[0]
    assert probs.shape == (41, 30, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_official_scales():
    assert OFFICIAL_EVAL_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_the_inference_rewrite_runs_once_at_first_use(monkeypatch):
    """Constructing a Segmenter is cheap (e.g. to read `output_stride`); the rewrite
    (`optimize_for_inference`, which copies the weights) runs once, at the first prediction."""
    from keras_deeplab.evaluation import segmenter as module

    calls = []
    rewrite = module.optimize_for_inference
    monkeypatch.setattr(
        module, "optimize_for_inference", lambda *a, **k: calls.append(1) or rewrite(*a, **k)
    )
    model = toy_model()
    seg = Segmenter(model, output_stride=4)
    assert calls == []
    first = seg.predict([smooth_image(21, 26)])[0]
    second = seg.predict([smooth_image(21, 26)])[0]
    assert calls == [1] and seg.inference_model is not model
    np.testing.assert_array_equal(first, second)
