"""Helpers shared by the tests: random images, tiny models, BatchNorm statistics, shared data.

Test modules import the functions (`from conftest import random_images, tiny_model`); the
fixtures (`shared_data`) need no import.

* `random_images(batch, size, seed)`: float32 RGB in [0, 255), what the models take;
* `random_rgb(size, seed)`: uint8 RGB pixels, as an image file holds them;
* `save_image(path, array)`, `save_mask(path, labels)`: image / mask files (folders created);
* `make_pairs(root, count)`: a small folder dataset (`images/`, `masks/`);
* `tiny_model(num_classes)`: the smallest registered DeepLab (`TINY_MODEL`) with BatchNorm
  statistics of real activations, so its logits and argmax are not degenerate;
* `toy_model()`, `smooth_image(h, w)`: a tiny plain Keras net and an image for `Segmenter`;
* `randomize_weights(model, seed)`: seeded random values in every weight;
* `randomize_batch_norms(model, seed)`: non-trivial BatchNorm parameters and statistics in
  every (nested) BatchNorm, so that a mistake involving them shows;
* `shared_data_dir(*parts)` / the `shared_data` fixture: the real data beside the
  repository (`keras_deeplab._shared_data`); fails under `CI=true`, skips elsewhere.
"""

import os
from pathlib import Path

# Under pytest-xdist each worker is one process on a 2-core machine: one TensorFlow thread per
# op in each worker (and its subprocesses) instead of every op spreading over both cores took
# 7% off tests/test_registry.py on 2 workers (113 s -> 106 s, AMD EPYC, 2026-12-01). The
# inter-op pool keeps its default: collective ops (MirroredStrategy tests) need more than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import gc

import keras_deeplab  # before keras: its settings (KERAS_BACKEND) apply when Keras loads

# isort: split
import keras
import numpy as np
import pytest
from PIL import Image

from keras_deeplab._shared_data import shared_data_dir as _locate_shared_data

# Building Keras models allocates hundreds of thousands of small objects: with the default
# thresholds the cyclic collector ran through TensorFlow's and Keras' module objects again and
# again. Frozen imports and rarer collections took ~10% off model building (six builds of
# DeepLabV3+ MobileNetV2 / ResNet-50, 11.9 -> 10.5 s and 10.9 -> 9.9 s, AMD EPYC).
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 20)

# The smallest registered model (MobileNetV2 x0.5, output stride 8); fast at 33-65 px.
TINY_MODEL = "deeplabv3_mobilenetv2_dm05_os8"


def random_images(batch=1, size=33, seed=0):
    """float32 `[batch, H, W, 3]` uniform in [0, 255); `size` is an int or `(H, W)`."""
    height, width = (size, size) if np.isscalar(size) else size
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype("float32")


def random_rgb(size=33, seed=0):
    """uint8 `[H, W, 3]` uniform over 0..255 (an image file's pixels); `size` is an int or `(H, W)`."""
    height, width = (size, size) if np.isscalar(size) else size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_image(path, array):
    """Writes a uint8 array (`[H, W]` or `[H, W, 3]`) as an image file; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def save_mask(path, labels, mode="L"):
    """Writes labels as an 8-bit mask PNG: mode "L" (gray) or "P" (VOC palette); returns `path`."""
    from keras_deeplab.data import voc_palette

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(labels, np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette(voc_palette().reshape(-1).tolist())
        img.putdata(np.asarray(labels, np.uint8).reshape(-1).tolist())
    img.save(path)
    return path


def make_pairs(root, count=3, size=(10, 12), values=(0, 1, 2)):
    """`root/images/im<k>.png` + `root/masks/im<k>.png`; returns the two folders."""
    rng = np.random.default_rng(0)
    for k in range(count):
        save_image(root / "images" / f"im{k}.png", rng.integers(0, 255, size + (3,)))
        save_mask(root / "masks" / f"im{k}.png", rng.choice(values, size))
    return root / "images", root / "masks"


def batch_norms(model):
    """Every BatchNormalization of `model`, nested models included."""
    from keras_deeplab import _compat

    layers = _compat.all_layers(model)
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def randomize_batch_norms(model, seed=0):
    """Random gamma / beta / moving statistics in every BatchNorm of `model`; returns it.

    Fresh models have mean 0 / variance 1, which hides BatchNorm mistakes (folding,
    conversion, loading).
    """
    rng = np.random.default_rng(seed)
    for bn in batch_norms(model):
        n = bn.moving_mean.shape[0]
        if bn.scale:
            bn.gamma.assign(rng.uniform(0.5, 1.5, n))
        if bn.center:
            bn.beta.assign(rng.normal(0, 0.1, n))
        bn.moving_mean.assign(rng.normal(0, 0.1, n))
        bn.moving_variance.assign(rng.uniform(0.5, 1.5, n))
    return model


def randomize_weights(model, seed=0):
    """Seeded random values in every weight of `model` (BatchNorm variances positive).

    Kernels keep their initializer's scale; after it, equal weights mean loaded weights.
    """
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, w.shape)
        elif w.path.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(0.0, 0.1, w.shape)
        else:  # kernels: keep the initializer's scale, new values
            std = float(np.std(w.numpy())) or 0.05
            value = rng.normal(0.0, std, w.shape)
        w.assign(value.astype(w.dtype))
    return model


def calibrate_batch_norms(model, images):
    """Sets every BatchNorm's moving statistics to those of `images` (one training pass)."""
    norms = batch_norms(model)
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    model(images, training=True)
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    return model


def tiny_model(num_classes=3, seed=0, size=33, **kwargs):
    """`TINY_MODEL` with BatchNorm statistics of 4 random `size` images.

    Freshly built models have near-zero logits (unit statistics on tiny activations);
    calibrated ones have logits and an argmax that depend on the image.
    """
    keras.utils.set_random_seed(seed)
    model = keras_deeplab.create_model(TINY_MODEL, num_classes=num_classes, **kwargs)
    return calibrate_batch_norms(model, random_images(4, size, seed))


def toy_model(num_classes=4, strided=True, softmax=False, seed=0):
    """A random DeepLab-like net taking RGB 0..255: output stride 4 (strided) or per-pixel.

    A plain `keras.Model` built in milliseconds (not a registered model): for `Segmenter` tests.
    """
    from keras_deeplab.layers import Conv2D, Preprocessing, ResizeBilinear

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = Preprocessing("symmetric")(inputs)
    if strided:
        x = Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        x = Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    else:
        x = Conv2D(8, 1, activation="relu")(x)
    x = Conv2D(num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    out = ResizeBilinear(name="upsampled_logits")([x, inputs])
    if softmax:
        out = keras.layers.Activation("softmax", name="probabilities")(out)
    return keras.Model(inputs, out)


def smooth_image(height, width, seed=0):
    """uint8 `[H, W, 3]` random pixels smoothed along the width (structure beyond noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
    # Smooth a bit so resizing matters less than structure; keep it asymmetric.
    return np.round(0.5 * base + 0.5 * np.roll(base, 3, axis=1)).astype(np.uint8)


def shared_data_dir(*parts):
    """The shared data folder (or `parts` below it); fails under `CI=true`, skips elsewhere."""
    try:
        return _locate_shared_data(*parts)
    except FileNotFoundError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def shared_data():
    """The shared data folder (see `shared_data_dir`)."""
    return shared_data_dir()


# The slowest test files, slowest first (seconds of one worker, `--junitxml` of a full run on the
# 2-core AMD host, 2026-12-01). `make test` distributes whole files (`--dist loadfile
# --no-loadscope-reorder`) in collection order: starting these first keeps a long file from
# being handed out last while the other worker idles (about 20 s of wall time in a replay of
# that run's file times; xdist's own order is by test count, which put
# test_training_distributed.py, 2 tests and 48 s, last). Other files follow in their usual order.
SLOWEST_FILES = (
    "test_registry.py",  # 203
    "test_docs_python.py",  # 139
    "test_weights_checkpoint.py",  # 108
    "test_models.py",  # 84
    "test_backbone_xception.py",  # 81
    "test_export_tflite.py",  # 69
    "test_fcn.py",  # 68
    "test_weights_imagenet.py",  # 66
    "test_precision.py",  # 65
    "test_export_saved_model.py",  # 61
    "test_camvid_zoo_smoke.py",  # 60
    "test_backbone_resnet.py",  # 55
    "test_optimize.py",  # 53
    "test_cli.py",  # 51
    "test_cli_chain.py",  # 50
    "test_training_distributed.py",  # 48
    "test_weights_loading.py",  # 44
    "test_training_replicas.py",  # 43
    "test_upernet.py",  # 40
    "test_backbone_resnet_variants.py",  # 36
    "test_hardening_faults.py",  # 35
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep order
