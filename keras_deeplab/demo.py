"""`keras-deeplab demo`: train on the synthetic shapes, evaluate, export, draw the results.

Trains DeepLabV3+ (MobileNetV2 x0.5) with the shipped `shapes_demo` recipe under
`train.precision=auto` (`DEMO_PRECISION`; a `train.precision=...` override wins), then writes overlays, the training
curve, a verified float32 SavedModel and a verified int8 TFLite file (a model trained in
reduced precision is rebuilt in float32 first).
"""

import shutil
import time
from pathlib import Path

DEMO_RECIPE = "shapes_demo"
# train.precision of the demo (the user's overrides come after). "auto": bfloat16 on GPUs of
# compute capability >= 8.0 (float16 on older ones); float32 on CPUs, including AMX and AMD
# AVX512-BF16 ones, where this MobileNetV2 model's depthwise convolutions make bfloat16 training
# no faster (`keras_deeplab.precision.training_fallback`; measured back to back on the idle
# 2-core AMX Xeon, 2026-11-30, two runs each: bf16 0.38 and 0.45 s/step, fp32 0.28 and 0.32;
# on the 2-core Zen 4 EPYC, 2026-12-02, one 128-step run each: bf16 213 ms/step, fp32 202).
DEMO_PRECISION = "auto"
OUTPUTS = (
    "overlays.png",
    "training_curve.png",
    "saved_model",
    "demo_int8.tflite",
    "saved_model.report.json",
    "demo_int8.report.json",
    "run",
)


def training_curve(history, path, loss_label="training loss"):
    """Writes the loss (and held-out mIoU, where evaluated) against the step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [h["loss"] for h in history], "o-", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label)
    evaluated = [h for h in history if "miou" in h]
    if evaluated:
        ax2 = ax.twinx()
        ax2.plot(
            [h["step"] for h in evaluated],
            [h["miou"] for h in evaluated],
            "s-",
            color="C1",
            label="val mIoU",
        )
        ax2.set_ylabel("held-out mIoU", color="C1")
        ax2.set_ylim(0, 1)
    ax.set_title("demo training on shapes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_is_run_dir(run):
    """Refuses to delete a folder that is not a training run directory (demo --out safety)."""
    entries = list(run.iterdir()) if run.is_dir() else [run]
    if entries and not (run / "config.yaml").is_file():
        raise ValueError(
            f"{run} exists and is not a keras-deeplab run directory (no config.yaml), so the "
            "demo will not delete it; pass another --out or remove it yourself."
        )


def demo_recipe():
    """Path of the shipped demo recipe (inside the installed package)."""
    from keras_deeplab.configs import recipe_path

    return recipe_path(DEMO_RECIPE)


def run_demo(out, resume=False, overrides=()):
    """Runs the demo into `out`; returns the held-out shapes mIoU.

    Example:
        ```python
        miou = run_demo("artifacts/demo", overrides=["train.steps=20"])
        ```
    """
    start = time.monotonic()
    import numpy as np
    from PIL import Image

    from keras_deeplab._cpu_steal import cpu_times, steal_note, steal_share
    from keras_deeplab.data import shapes
    from keras_deeplab.data.augment import pad_to_grid
    from keras_deeplab.evaluation import Segmenter
    from keras_deeplab.export import to_saved_model, to_tflite
    from keras_deeplab.optimize import with_dtype_policy
    from keras_deeplab.precision import model_precision
    from keras_deeplab.training import load_config, train_from_config
    from keras_deeplab.training.summaries import overlay_grid

    out = Path(out)
    if (out / "run").exists() and not resume:
        _check_is_run_dir(out / "run")
        shutil.rmtree(out / "run")  # a fresh demo each time unless --resume
    out.mkdir(parents=True, exist_ok=True)
    config = demo_recipe()
    overrides = [
        f"checkpoint.dir={out / 'run'}",
        f"train.precision={DEMO_PRECISION}",
        *overrides,
    ]
    print(
        f"1/3 training a DeepLabV3+ (MobileNetV2 x0.5) on the synthetic shapes data ({config.name})"
    )
    ticks = cpu_times()
    result = train_from_config(config, overrides)
    model = result.model
    miou = result.metrics["miou"] if result.metrics else float("nan")
    print(f"    step {result.step}, {result.elapsed:.0f}s; held-out shapes mIoU {miou:.4f}")
    if note := steal_note(steal_share(ticks)):
        print(f"    ({note})")
    settings = load_config(config, overrides)
    if result.history:
        loss = settings.loss
        label = "training loss"
        if loss.top_k_percent_pixels < 1:
            label += (
                f" (hardest {loss.top_k_percent_pixels:.0%} of pixels"
                f" from step {loss.hard_example_mining_step})"
            )
        training_curve(result.history, out / "training_curve.png", label)

    if model_precision(model) != "float32":  # trained in bf16/fp16: infer and export in fp32
        model = with_dtype_policy(model, "float32")
    shape_options = {**settings.data.options, **settings.data.eval_options}
    val = shapes("val", num_examples=8, image_size=shape_options.get("image_size", 96))
    images, masks = zip(*val.dataset.as_numpy_iterator(), strict=True)
    images, masks = np.stack(images), np.stack(masks)
    # As evaluated and trained: padded to k * output_stride + 1 (97 for the 96-px images), so
    # the align-corners resizes line up with the pixels (unpadded 96-px inputs score ~0.13 less).
    segmenter = Segmenter(model, batch_size=len(images))
    predictions = np.stack(segmenter.predict(list(images)))
    grid = overlay_grid(images, masks, predictions)
    Image.fromarray(np.concatenate(list(grid), axis=0)).save(out / "overlays.png")

    print("2/3 exporting a SavedModel (verified against the Keras model)")
    sm = to_saved_model(
        model,
        str(out / "saved_model"),
        overwrite=True,
        report_path=str(out / "saved_model.report.json"),
    )
    print(f"    max abs diff {sm['max_abs_diff']}, class-map agreement {sm['class_map_agreement']}")
    print("3/3 exporting an int8 TFLite (calibrated on shapes train images, verified)")
    train = shapes("train", num_examples=32, image_size=images.shape[1:3])
    calibration = [img for img, _ in train.dataset.as_numpy_iterator()]
    # 97 x 97 for 96-px shapes: the file takes images padded like the Segmenter's
    stride = segmenter.output_stride
    samples = pad_to_grid(images[:4], stride)
    tfl = to_tflite(
        model,
        str(out / "demo_int8.tflite"),
        input_size=samples.shape[1:3],
        quantize="int8",
        representative_data=pad_to_grid(np.stack(calibration), stride),
        sample_images=samples,
        report_path=str(out / "demo_int8.report.json"),
    )
    print(
        f"    argmax agreement with Keras {tfl.get('argmax_agreement')}, "
        f"{tfl.get('size_bytes', 0) / 1e6:.2f} MB"
    )
    print(
        f"\nheld-out shapes mIoU: {miou:.4f} (target >= 0.85); "
        f"{time.monotonic() - start:.0f} s for data, training, evaluation and both exports"
    )
    for name in OUTPUTS:
        print(f"  {out / name}")
    print(f"Evaluate or export the trained model with --run {out / 'run'}")
    return miou
