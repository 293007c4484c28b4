"""Evaluation on real data: Google's DeepLabV3 MobileNetV2 weights on 8 VOC 2012 val images.

The data's PROVENANCE.md publishes mIoU 0.7559 / pixel accuracy 0.9451 for the official
TFLite file with its own protocol (PIL bilinear to 257x257, logits resized back with
bilinear, argmax, one confusion matrix over the 8 images, 255 ignored). Our converted model
and `ConfusionMatrix` must reproduce that to 4 decimals.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_data_dir
from PIL import Image

from keras_deeplab.evaluation import ConfusionMatrix, Segmenter
from keras_deeplab.weights import load_tflite


@pytest.fixture(scope="module")
def official():
    model = load_tflite(shared_data_dir("deeplabv3_tflite", "deeplabv3_257_mv_gpu.tflite"))
    root = shared_data_dir("voc2012_samples")
    samples = []
    for path in sorted((root / "JPEGImages").glob("*.jpg")):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        with Image.open(root / "SegmentationClass" / f"{path.stem}.png") as mask:
            labels = np.asarray(mask, np.uint8)
        samples.append((rgb, labels))
    assert len(samples) == 8
    return model, samples


def test_reproduces_published_miou(official):
    model, samples = official
    cm = ConfusionMatrix(21)
    for rgb, labels in samples:
        x = np.asarray(rgb.resize((257, 257), Image.BILINEAR), np.float32)
        logits = model(x[None]).numpy()
        logits = tf.image.resize(logits, labels.shape, method="bilinear").numpy()[0]
        cm.update(labels, logits.argmax(-1))
    result = cm.result()
    assert round(result["miou"], 4) == 0.7559
    assert round(result["pixel_accuracy"], 4) == 0.9451
    present = np.flatnonzero(~np.isnan(result["per_class_iou"]))
    assert present.tolist() == [0, 1, 2, 4, 15, 17, 19, 20]


def test_segmenter_native_resolution(official):
    model, samples = official
    seg = Segmenter(model)
    assert seg.output_stride == 8
    images = [np.asarray(rgb) for rgb, _ in samples]
    cm = ConfusionMatrix(21)
    for labels, (_, mask) in zip(seg.predict(images), samples, strict=True):
        assert labels.shape == mask.shape
        cm.update(mask, labels)
    # Official eval protocol (full image padded to k*8+1): 0.8409 measured.
    assert cm.result()["miou"] == pytest.approx(0.8409, abs=2e-3)


def test_flip_equivariance_with_official_weights(official):
    model, samples = official
    rgb = np.asarray(samples[4][0])  # 2007_000129, portrait
    seg = Segmenter(model, flip=True, batch_size=2)
    a, b = seg.predict_proba([rgb, np.ascontiguousarray(rgb[:, ::-1])])
    np.testing.assert_allclose(a[:, ::-1], b, atol=1e-5)
