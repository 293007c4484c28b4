"""Training speed: images/s of one SGD step (fused or Keras BatchNorm), and of the input
pipeline that feeds it."""

import time
from pathlib import Path

from benchmarks._common import shared_data_dir, train_step_rate


def bench_train(
    name,
    crop=513,
    batch=8,
    steps=3,
    budget_s=60.0,
    num_classes=21,
    fused_bn=True,
    precision="float32",
):
    """Images/s of one SGD step (pixel cross-entropy, momentum 0.9) at `crop`, `batch`.

    `fused_bn=False` runs every BatchNorm through Keras' own (unfused) training path: the
    "before" of the fused-BatchNorm optimisation. `precision="bfloat16"` builds the model
    under `mixed_bfloat16` as `train.precision=bfloat16` does (float32 weights and loss).
    Example: `bench_train("deeplabv3_mobilenetv2_dm05", crop=33, batch=2, steps=1)`.
    """
    import keras_deeplab
    from keras_deeplab.precision import dtype_policy
    from keras_deeplab.training.batchnorm import batch_norm_layers
    from keras_deeplab.training.trainer import build_with_policy

    model = build_with_policy(
        lambda: keras_deeplab.create_model(name, num_classes=num_classes), dtype_policy(precision)
    )
    for layer in batch_norm_layers(model):
        layer.fused = fused_bn
    out = train_step_rate(model, crop, batch, steps, num_classes=num_classes, budget_s=budget_s)
    return {**out, "fused_bn": fused_bn, "precision": precision}


def bench_pipeline(crop=513, batch=8, batches=12, data_dir=None):
    """Images/s of `train_pipeline` (official augmentation) on CamVid JPEG/PNG pairs.

    `data_dir`: the shared data folder (default `benchmarks._common.shared_data_dir()`).
    """
    from keras_deeplab.data import camvid, train_pipeline

    root = Path(data_dir) / "camvid_segnet" if data_dir else shared_data_dir("camvid_segnet")
    data = camvid(root, "train")
    ds = train_pipeline(data, batch, crop_size=crop, seed=0).repeat()
    it = iter(ds)
    for _ in range(2):  # warm-up: graph building, first files
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    seconds = time.perf_counter() - start
    return {
        "source": f"camvid_segnet train ({data.num_examples} pairs, 480x360)",
        "crop": crop,
        "batch": batch,
        "batches": batches,
        "images_per_s": batch * batches / seconds,
        "shape": list(images.shape),
    }
