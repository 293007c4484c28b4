"""keras-hub peer worker: runs inside `benchmarks/.venv-peers` (see `setup_peers.sh`).

Builds keras-hub's `DeepLabV3ImageSegmenter` offline (no presets, random weights):
`ResNetBackbone` with the ResNet50 configuration of keras-hub's `resnet_50_imagenet` preset
(bottleneck blocks 3-4-6-3, no pre-activation), `DeepLabV3Backbone(low_level_feature_key="P2",
spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18])`, 21 classes.

Tasks (a JSON argument), result printed as one tagged JSON line:
* `{"kind": "infer", "size": 512, "precision": "float32"}`: latency at batch 1
  (`tf.function`, warm-up excluded, median), GFLOP per image and achieved GFLOP/s;
  `"precision": "bfloat16"` builds the model under the global Keras policy `mixed_bfloat16`
  (keras-hub's own way to run in bfloat16);
* `{"kind": "train", "size": 512, "batch": 8, "steps": 3}`: training images/s with the same
  step as `benchmarks.training.bench_train` (SGD momentum 0.9, pixel cross-entropy);
* `{"kind": "serve", "size": 512}`: builds the float32 and the `mixed_bfloat16` model once and
  then times them on request (`benchmarks._common.serve_timings`; driven by
  `benchmarks.peer_ratio`).

GFLOP per image are counted by TF's graph profiler (`tf.compat.v1.profiler`, float_ops of
the Conv2D / DepthwiseConv2dNative / MatMul nodes of the traced forward graph, which TF
counts as 2 x multiply-adds); the same counter is run on our DeepLabV3+ resnet50 at the same
size and reported beside `keras_deeplab.macs.count_macs` as a cross-check of the method.
"""

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import emit_result, measure, serve_timings, train_step_rate

REPO = Path(__file__).resolve().parents[1]
MODEL_LABEL = "keras_hub.models.DeepLabV3ImageSegmenter (ResNet50, P2, P5, rates 6/12/18)"
COUNTED_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "_FusedConv2D")


def build(size, num_classes=21):
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=(size, size, 3),
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        image_shape=(size, size, 3),
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes)


def profiled_gflop(model, size):
    """GFLOP of one image: TF profiler float_ops of the conv / matmul nodes of the graph."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    stats = tf.compat.v1.profiler.profile(graph, cmd="op", options=options)
    per_op = {child.name: child.total_float_ops for child in stats.children}
    counted = sum(v for k, v in per_op.items() if k in COUNTED_OPS)
    return counted / 1e9, {k: v / 1e9 for k, v in per_op.items() if v}


def set_precision(precision):
    """Global Keras dtype policy for `precision` ("float32" or "bfloat16")."""
    import keras

    policies = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
    if precision not in policies:
        raise ValueError(f"precision must be float32 or bfloat16; got {precision!r}")
    keras.config.set_dtype_policy(policies[precision])


def infer(size, precision="float32"):
    import keras
    import keras_hub
    import tensorflow as tf

    set_precision(precision)
    model = build(size)
    gflop, per_op = profiled_gflop(model, size)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
    fn = tf.function(lambda x: model(x, training=False))
    stats = measure(lambda: fn(x).numpy(), budget_s=8.0)
    out = {
        "model": MODEL_LABEL,
        "size": size,
        "precision": precision,
        "params": int(model.count_params()),
        "gflop_per_image": gflop,
        "profiled_gflop_by_op": per_op,
        "macs_method": "TF profiler float_ops of Conv2D/DepthwiseConv2dNative/MatMul nodes "
        "(2 x MACs) of the traced forward graph",
        **stats,
        "gflops": gflop / (stats["median_ms"] / 1e3),
        "versions": {
            "keras_hub": keras_hub.__version__,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
    }
    keras.config.set_dtype_policy("float32")
    try:  # cross-check the counting method on our model (same counter, same size)
        sys.path.insert(0, str(REPO))
        import keras_deeplab
        from keras_deeplab.macs import count_macs

        ours = keras_deeplab.create_model("deeplabv3plus_resnet50", num_classes=21)
        out["cross_check_ours"] = {
            "model": "deeplabv3plus_resnet50",
            "profiler_gflop": profiled_gflop(ours, size)[0],
            "count_macs_gflop": 2 * count_macs(ours, size) / 1e9,
        }
    except Exception as err:  # the cross-check is optional
        out["cross_check_ours"] = {"error": str(err)[:200]}
    return out


def train(size, batch, steps, precision="float32"):
    set_precision(precision)
    return {**train_step_rate(build(size), size, batch, steps), "precision": precision}


def serve(size):
    """Float32 and bfloat16 keras-hub models held in one process, timed on request."""
    import keras
    import keras_hub
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
    runners, gflop = {}, None
    for precision in ("float32", "bfloat16"):
        set_precision(precision)
        model = build(size)
        if gflop is None:
            gflop = profiled_gflop(model, size)[0]
        fn = tf.function(lambda x, model=model: model(x, training=False))
        runners[precision] = lambda fn=fn: fn(x).numpy()
    keras.config.set_dtype_policy("float32")
    meta = {
        "model": MODEL_LABEL,
        "gflop_per_image": gflop,
        "versions": {"keras_hub": keras_hub.__version__, "tensorflow": tf.__version__},
    }
    serve_timings(runners, meta)


def main():
    task = json.loads(sys.argv[1])
    if task["kind"] == "serve":
        serve(task["size"])
        return
    if task["kind"] == "infer":
        out = infer(task["size"], task.get("precision", "float32"))
    elif task["kind"] == "train":
        out = train(
            task["size"], task["batch"], task.get("steps", 3), task.get("precision", "float32")
        )
    else:
        raise ValueError(f"unknown task {task['kind']!r}")
    emit_result(out)


if __name__ == "__main__":
    main()
