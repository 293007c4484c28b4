"""One precision switch for inference and training: capability check and resolution.

API (used by the inference paths and by training's `train.precision`):

* `PRECISIONS = ("auto", "float32", "bfloat16", "float16")`: the allowed values.
* `native_precision()` -> `"bfloat16"` on a CPU with AMX (`amx_bf16` in /proc/cpuinfo), on
  an AMD CPU with `avx512_bf16` (Zen 4 and later) or on a GPU of compute capability >= 8.0,
  `"float16"` on older GPUs, `"float32"` otherwise (Intel CPUs with `avx512_bf16` but no AMX
  included: bfloat16 measured slower there). A capability check (CPU vendor and flags,
  `tf.config.experimental.get_device_details`), never a timing. `native_reason()` says why,
  e.g. `"CPU has amx_bf16"`.
* `resolve_precision(precision, purpose="inference")` -> the concrete precision
  (`"float32"`, `"bfloat16"` or `"float16"`). `"auto"` -> `native_precision()`. Errors: an
  unknown value (lists the allowed ones); `"float16"` without a GPU (suggests bfloat16).
  `"bfloat16"` without native support works and warns once per process that it is slower.
* `training_fallback(model)` -> None, or why `"auto"` trains this built model in float32
  although the CPU runs bfloat16 natively: its depthwise convolutions have no AMX kernel
  (oneDNN runs them and both their gradients on AVX512-BF16 kernels, `jit_dw` /
  `brdgmm_dw:avx512_core_bf16`, on AMX and AMD CPUs alike), and where they hold 3% or more
  of the multiply-adds (`depthwise_share(model)`, `DEPTHWISE_SHARE_LIMIT`) a training step
  is no faster in bfloat16 (the measurements: docs/training.md, "Precision"). A check of the
  model's structure, never a timing; GPUs never fall back.
* `describe_choice(precision, purpose="inference")` -> one line for CLI output and
  reports, e.g. `"precision auto -> bfloat16 (CPU has amx_bf16)"`.
* `dtype_policy(precision)` -> the Keras dtype policy name: `"mixed_bfloat16"`,
  `"mixed_float16"` or None (float32). Variables stay float32 under both mixed policies;
  the models keep softmax/argmax in float32 (`optimize_for_inference` casts the logits back
  to float32; the Segmenter takes the argmax on those).
* `model_precision(model)` -> the precision a built model computes in (a model trained under
  a mixed policy keeps it); `inference_policy(model, precision)` -> the policy for
  `optimize_for_inference` that makes it compute in `precision` ("float32" undoes a mixed
  training policy).
* `keras_deeplab.evaluation.segmenter.verify_precision(model, precision, images, labels)`
  -> argmax agreement and mIoU of a reduced-precision inference model against float32 on the
  same images (it lives with the Segmenter it runs).

Example:

```python
from keras_deeplab.precision import describe_choice, dtype_policy, resolve_precision

precision = resolve_precision("auto")  # "bfloat16" on an AMX Xeon or a Zen 4 EPYC
policy = dtype_policy(precision)  # "mixed_bfloat16" or None
print(describe_choice("auto"))  # precision auto -> bfloat16 (CPU has amx_bf16)
```
"""

import functools
import warnings

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PURPOSES = ("inference", "training")
# Compute capability from which a GPU has bfloat16 tensor cores (Ampere).
BF16_GPU_CAPABILITY = (8, 0)
_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
_warned = set()
# AMD CPUs with avx512_bf16 (Zen 4 and later) run bfloat16 dot products at twice the float32
# FMA rate; on the 2-core EPYC of 2026-12-02 the optimised bf16 inference graph ran at
# 0.51-0.54x of float32's latency (docs/benchmarks.md, "Precision"). The Intel Xeons with
# avx512_bf16 but no AMX measured here ran it mostly slower (0.61-1.57x speed).
AMD = "vendor:AuthenticAMD"


@functools.lru_cache(maxsize=1)
def _hardware():
    """`(cpu_features, gpus)`: the /proc/cpuinfo flags plus `"vendor:<vendor_id>"` (e.g.
    `"vendor:AuthenticAMD"`), and `[(name, (major, minor))]`."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    flags.add("vendor:" + line.split(":", 1)[1].strip())
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    gpus = []
    try:
        import tensorflow as tf

        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device) or {}
            capability = tuple(details.get("compute_capability") or (0, 0))
            gpus.append((details.get("device_name", device.name), capability))
    except (ImportError, RuntimeError, ValueError):
        pass
    return frozenset(flags), tuple(gpus)


def _native():
    """`(precision, reason)` of this machine's native reduced precision."""
    flags, gpus = _hardware()
    if gpus:
        name, capability = min(gpus, key=lambda g: g[1])  # the weakest GPU decides
        label = f"GPU {name} compute capability {capability[0]}.{capability[1]}"
        if capability >= BF16_GPU_CAPABILITY:
            return "bfloat16", label
        return "float16", label
    if "amx_bf16" in flags:
        return "bfloat16", "CPU has amx_bf16"
    if "avx512_bf16" in flags and AMD in flags:
        return "bfloat16", "AMD CPU with avx512_bf16"
    if "avx512_bf16" in flags:
        return "float32", "CPU has avx512_bf16 but no AMX: bfloat16 is not faster there"
    return "float32", "CPU without a bfloat16 unit (no amx_bf16)"


def cpu_has_bfloat16():
    """True on a CPU with a bfloat16 unit (`amx_bf16` or `avx512_bf16` in /proc/cpuinfo)."""
    flags, _ = _hardware()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def native_precision():
    """The precision this machine runs fastest natively: "bfloat16", "float16" or "float32".

    Example:
        >>> native_precision()  # on an AMX Xeon
        'bfloat16'
    """
    return _native()[0]


def native_reason():
    """Why `native_precision()` chose what it did, e.g. "CPU has amx_bf16"."""
    return _native()[1]


def _check(precision, purpose):
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}.")
    if precision is None:
        return "float32"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not allowed; use one of {', '.join(PRECISIONS)} "
            f"('auto' picks bfloat16 on AMX CPUs, AMD CPUs with AVX512-BF16 and recent GPUs, "
            f"float32 otherwise)."
        )
    return precision


def resolve_precision(precision, purpose="inference"):
    """The concrete precision ("float32", "bfloat16" or "float16") for `precision`.

    Args:
        precision: one of `PRECISIONS` (None means "float32").
        purpose: "inference" or "training" (only changes the messages).

    Raises:
        ValueError: unknown precision, or "float16" on a machine without a GPU.

    Example:
        >>> resolve_precision("auto")  # an AMX Xeon
        'bfloat16'
    """
    precision = _check(precision, purpose)
    if precision == "auto":
        return native_precision()
    _, gpus = _hardware()
    if precision == "float16" and not gpus:
        raise ValueError(
            f"precision='float16' for {purpose} needs a GPU and none is visible: CPUs have "
            f"no fast float16 path. Use precision='bfloat16' (native on CPUs with AMX or AMD's "
            f"AVX512-BF16) or 'auto'."
        )
    if precision == "bfloat16" and native_precision() != "bfloat16":
        key = ("bfloat16", purpose)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"precision='bfloat16' for {purpose}: this machine has no native bfloat16 "
                f"unit ({native_reason()}), so it will run slower than float32 (results stay "
                f"valid). Use precision='auto' to get the fastest supported precision.",
                stacklevel=2,
            )
    return precision


def describe_choice(precision="auto", purpose="inference"):
    """One line stating the choice, e.g. "precision auto -> bfloat16 (CPU has amx_bf16)".

    Example:
        >>> describe_choice("float32")
        'precision float32'
    """
    precision = _check(precision, purpose)
    if precision == "auto":
        return f"precision auto -> {native_precision()} ({native_reason()})"
    resolved = resolve_precision(precision, purpose)
    if resolved == "float32":
        return "precision float32"
    native = native_precision() == resolved
    return f"precision {resolved} ({'native' if native else 'not native'}: {native_reason()})"


# `training_fallback`: the depthwise share of a model's multiply-adds from which its bfloat16
# training on an AMX CPU is no faster than float32 (measured per model: docs/training.md,
# "Precision": 4.4% and more slower or equal in bf16, 1.9% and less faster).
DEPTHWISE_SHARE_LIMIT = 0.03
_SHARE_SIZE = (256, 256)  # where the model's own input size is not fixed


def depthwise_share(model):
    """Fraction of `model`'s multiply-adds in depthwise convolutions (0 without any).

    Counted at the model's input size, or 256x256 where that is not fixed (the share hardly
    depends on the size).

    Example:
        >>> round(depthwise_share(keras_deeplab.create_model("deeplabv3_mobilenetv2")), 3)
        0.051
    """
    from keras_deeplab.macs import count_macs

    if not _has_depthwise(model):
        return 0.0
    shape = tuple(model.input_shape[1:3]) if not isinstance(model.input_shape, list) else ()
    size = shape if len(shape) == 2 and None not in shape else _SHARE_SIZE
    total = count_macs(model, size)
    return count_macs(model, size, depthwise_only=True) / total if total else 0.0


def _has_depthwise(model):
    import keras

    from keras_deeplab import _compat

    return any(
        isinstance(layer, keras.layers.DepthwiseConv2D | keras.layers.SeparableConv2D)
        for layer in _compat.all_layers(model)
    )


def training_fallback(model):
    """Why `train.precision="auto"` trains `model` in float32 on this machine, or None.

    On a CPU whose native precision is bfloat16 (AMX, or AMD's AVX512-BF16), a model whose
    depthwise convolutions hold `DEPTHWISE_SHARE_LIMIT` (3%) or more of its multiply-adds
    trains in float32: AMX has no depthwise kernel (see the module docstring), and such light
    models are slower in bfloat16 there and no faster on AMD's AVX512-BF16 (DeepLabV3+
    MobileNetV2 at crop 513: 1.02x); heavier heads on the same trunk (PSPNet, UperNet,
    RefineNet on MobileNetV2) are faster in bfloat16 and keep it (DeepLabV3+ Xception65, 1.5%,
    measured about equal on AMX). Inference is not affected (the optimised bf16 inference graph
    of DeepLabV3 MobileNetV2 ran at 0.79x of its float32 latency at 513 px on the AMX machine,
    0.54x on the AMD one). Always None on GPUs and on CPUs without native bfloat16.

    Example:
        >>> training_fallback(keras_deeplab.create_model("deeplabv3_mobilenetv2"))  # AMX CPU
        'its depthwise convolutions (5.1% of its multiply-adds) have no AMX kernel'
    """
    _, gpus = _hardware()
    if gpus or native_precision() != "bfloat16":
        return None
    try:
        share = depthwise_share(model)
    except Exception:  # a model that cannot be rebuilt at a fixed size: any depthwise layer
        share = float(_has_depthwise(model))
    if share >= DEPTHWISE_SHARE_LIMIT:
        flags, _ = _hardware()
        why = "have no AMX kernel" if "amx_bf16" in flags else "train no faster in bfloat16 here"
        return f"its depthwise convolutions ({share:.1%} of its multiply-adds) {why}"
    return None


def dtype_policy(precision):
    """Keras dtype policy name for a precision: "mixed_bfloat16", "mixed_float16" or None.

    "auto" is resolved first (`resolve_precision`).

    Example:
        >>> dtype_policy("bfloat16")
        'mixed_bfloat16'
    """
    return _POLICIES[resolve_precision(precision)]


def model_precision(model):
    """The precision `model`'s layers compute in: "float32", "bfloat16" or "float16" (the
    lowest found; a model trained under a mixed policy keeps it).

    Example:
        >>> model_precision(keras_deeplab.create_model("deeplabv3_mobilenetv2"))
        'float32'
    """
    from keras_deeplab import _compat

    found = {getattr(layer, "compute_dtype", "float32") for layer in _compat.all_layers(model)}
    for name in ("float16", "bfloat16"):
        if name in found:
            return name
    return "float32"


def inference_policy(model, precision):
    """The dtype policy that makes `model` compute in `precision` (resolved): None when it
    already does in float32, "float32" to undo a mixed training policy, else the mixed one.

    Example:
        >>> inference_policy(model, "bfloat16")
        'mixed_bfloat16'
    """
    policy = dtype_policy(precision)
    if policy is None and model_precision(model) != "float32":
        return "float32"
    return policy


__all__ = [
    "PRECISIONS",
    "depthwise_share",
    "describe_choice",
    "dtype_policy",
    "inference_policy",
    "model_precision",
    "native_precision",
    "native_reason",
    "resolve_precision",
    "training_fallback",
]
