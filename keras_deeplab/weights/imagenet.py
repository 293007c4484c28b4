"""ImageNet backbone weights from `keras.applications` (`backbone_weights=`).

DeepLab initialises its backbone from ImageNet (Chen et al., arXiv:1606.00915
§4; official `research/deeplab/g3doc/model_zoo.md`). For the backbones that
`keras.applications` also defines with the same layers, its ImageNet weights
are copied in:

* `resnet50` / `resnet101` (Caffe/MSRA layout of DeepLab v2) and `vgg16`:
  our layers carry the keras.applications names, copied by name;
* `mobilenetv2` (depth multiplier 1.0): keras.applications names
  (`Conv1`, `bn_Conv1`, `block_3_expand_BN`, ...) are mapped explicitly to the
  slim names (`Conv`, `Conv_BatchNorm`, `expanded_conv_3_expand_BatchNorm`, ...);
  `Conv_1` (1280 channels) is not part of DeepLab's backbone and is ignored.
  BN epsilon is 1e-3 on both sides (momentum only matters for training).

Xception-41/65/71 and the `*_beta` ResNets have no keras.applications twin:
their ImageNet weights are the official TF checkpoints
(`keras_deeplab.weights.load_tf_checkpoint`). `mobilenetv2_dm05` does not fit
keras.applications' `alpha=0.5` (channels rounded differently).

`backbone_weights` may also be a local file: a keras.applications weights file
(Keras 3 `.weights.h5`, or the legacy Keras 2 `..._notop.h5` it downloads), a
`.weights.h5` saved from this package's backbone or model, or a backbone
preset name (`keras_deeplab.weights.list_presets("backbone")`).
"""

import keras

from keras_deeplab.backbones import resolve_backbone_name
from keras_deeplab.weights.loading import assign, describe_mismatch, match_layers, model_layers
from keras_deeplab.weights.presets import PRESETS, resolve_weights
from keras_deeplab.weights.weights_file import (
    is_keras3_weights,
    open_weights_file,
    read_weights_file,
)

# Canonical backbone name -> keras.applications builder.
APPLICATIONS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "mobilenetv2": "MobileNetV2",
    "vgg16": "VGG16",
}
# keras.applications MobileNetV2 layers beyond DeepLab's `expanded_conv_16`.
MOBILENETV2_IGNORED = ("Conv_1", "Conv_1_bn")
MOBILENETV2_BLOCKS = 17
# keras.applications classifier layers (`include_top=True` files): ignored.
APPLICATION_TOP = ("predictions", "fc1", "fc2")


def mobilenetv2_name_map():
    """keras.applications MobileNetV2 layer name -> our (slim) layer name."""
    names = {"Conv1": "Conv", "bn_Conv1": "Conv_BatchNorm"}
    for part in ("depthwise", "project"):
        names[f"expanded_conv_{part}"] = f"expanded_conv_{part}"
        names[f"expanded_conv_{part}_BN"] = f"expanded_conv_{part}_BatchNorm"
    for i in range(1, MOBILENETV2_BLOCKS):
        for part in ("expand", "depthwise", "project"):
            names[f"block_{i}_{part}"] = f"expanded_conv_{i}_{part}"
            names[f"block_{i}_{part}_BN"] = f"expanded_conv_{i}_{part}_BatchNorm"
    return names


def _name_map(name):
    return mobilenetv2_name_map() if name == "mobilenetv2" else None


def _backbone_preset(name):
    if f"imagenet_{name}" in PRESETS:
        return f"imagenet_{name}"
    for preset, p in sorted(PRESETS.items()):
        if p["kind"] == "backbone" and p["backbone"] == name:
            return preset
    return None


def _unsupported(name, weights):
    """The error for a backbone without keras.applications ImageNet weights."""
    if name == "mobilenetv2_dm05":
        return ValueError(
            f"backbone_weights={weights!r}: keras.applications' MobileNetV2 ImageNet weights fit "
            f"depth multiplier 1.0 only. Its alpha=0.5 rounds channels to multiples of 8 "
            f"(expanded_conv_1 projects to 16 channels) while DeepLab's dm 0.5 uses divisor 1 "
            f"(12 channels), so the shapes differ. Use backbone 'mobilenetv2', or convert an "
            f"official slim dm0.5 checkpoint with keras_deeplab.weights.load_tf_checkpoint."
        )
    preset = _backbone_preset(name)
    hint = (
        f" (preset {preset!r}: {PRESETS[preset]['description'].rstrip('.')}; pass "
        f"backbone_weights={preset!r} once its file exists)"
        if preset
        else ""
    )
    return ValueError(
        f"backbone_weights={weights!r}: {name} has no keras.applications counterpart; its "
        f"ImageNet weights come from the official TF checkpoints{hint}. Convert one with "
        f"keras_deeplab.weights.load_tf_checkpoint(prefix, model, backbone_only=True) or "
        f"`keras-deeplab convert --from-tf-checkpoint PREFIX --model MODEL --backbone-only "
        f"--out FILE.weights.h5`. keras.applications ImageNet weights exist for: "
        f"{', '.join(sorted(APPLICATIONS))}."
    )


def build_application(name, weights=None):
    """The keras.applications model matching backbone `name` (`include_top=False`)."""
    builder = getattr(keras.applications, APPLICATIONS[name])
    kwargs = {"include_top": False, "weights": weights}
    if name == "mobilenetv2":
        kwargs.update(alpha=1.0, input_shape=(224, 224, 3))
    return builder(**kwargs)


def _application_layers(app, name):
    """keras.applications weights as {(our layer name,): arrays}, ignored layers dropped."""
    names = _name_map(name)
    layers = {}
    for layer in app.layers:
        store = {}
        layer.save_own_variables(store)
        if not store or (name == "mobilenetv2" and layer.name in MOBILENETV2_IGNORED):
            continue
        target = names.get(layer.name, layer.name) if names else layer.name
        layers[(target,)] = [keras.ops.convert_to_numpy(store[str(i)]) for i in range(len(store))]
    return layers


def _load_exact(backbone_model, layers, source, containers=(), targets=None):
    """Loads `layers` into the backbone if names and shapes match exactly; else ValueError."""
    if targets is None:
        targets = model_layers(backbone_model)
    pairs, missing, extra, mismatched = match_layers(layers, targets[0])
    if missing or extra or mismatched:
        raise ValueError(
            describe_mismatch(source, missing, extra, mismatched, containers, targets[1])
        )
    assign(pairs)
    return backbone_model


def _select_backbone(layers, containers, backbone_name):
    """The entries of the file's sub-model named like our backbone (whole file otherwise)."""
    candidates = [c for c in containers if c[-1] == backbone_name]
    if not candidates:
        candidates = [c for c in containers if c[-1].endswith("_backbone")]
    if len(candidates) != 1:
        return layers, containers
    prefix = candidates[0]
    n = len(prefix)
    selected = {p[n:]: a for p, a in layers.items() if p[:n] == prefix}
    inner = {c[n:] for c in containers if c[:n] == prefix and len(c) > n}
    return selected, inner


def _load_keras3_file(backbone_model, name, path, layers, containers):
    layers, containers = _select_backbone(layers, containers, backbone_model.name)
    if name in APPLICATIONS:
        layers = {p: a for p, a in layers.items() if p[-1] not in APPLICATION_TOP}
    targets = model_layers(backbone_model)
    attempts = [layers]
    names = _name_map(name)
    if names:  # a keras.applications MobileNetV2 file: translate its names
        attempts.append(
            {
                (*p[:-1], names.get(p[-1], p[-1])): a
                for p, a in layers.items()
                if p[-1] not in MOBILENETV2_IGNORED
            }
        )
    errors = []
    for attempt in attempts:
        try:
            return _load_exact(backbone_model, attempt, path, containers, targets)
        except ValueError as error:
            errors.append(str(error))
    message = min(errors, key=len)
    if name not in APPLICATIONS:
        message += " " + str(_unsupported(name, path))
    else:
        message += (
            f" Expected keras.applications.{APPLICATIONS[name]}(include_top=False) weights or a "
            f"file saved from this package's {name} backbone."
        )
    raise ValueError(message)


def load_backbone_weights(backbone_model, backbone_name, weights):
    """Loads ImageNet weights into a DeepLab backbone (called by the builders).

    Args:
        backbone_model: the backbone `keras.Model` (any output stride / input shape).
        backbone_name: its registry name (`"resnet50"`, `"mobilenetv2"`, ...).
        weights: `"imagenet"` (keras.applications weights; downloads once into
            `~/.keras/models`), a local weights file (see the module docstring),
            or a backbone preset name.

    Raises:
        ValueError: unsupported backbone, or a file that does not fit (one
            message naming the file and what differs).
        FileNotFoundError: the file does not exist.

    Example:
        `DeepLabV3Plus(backbone="resnet101", backbone_weights="imagenet")`
    """
    name = resolve_backbone_name(backbone_name)
    if isinstance(weights, str) and weights == "imagenet":
        if name not in APPLICATIONS:
            raise _unsupported(name, weights)
        try:
            app = build_application(name, "imagenet")
        except Exception as error:
            raise OSError(
                f"Could not get the ImageNet weights of keras.applications.{APPLICATIONS[name]} "
                f"(they are downloaded once into ~/.keras/models): {error}. Offline, pass "
                f"backbone_weights=PATH to the downloaded `..._notop.h5` file."
            ) from error
        source = f"keras.applications.{APPLICATIONS[name]} ImageNet weights"
        return _load_exact(backbone_model, _application_layers(app, name), source)

    path = resolve_weights(weights)
    with open_weights_file(path) as handle:
        keras3 = is_keras3_weights(handle)
    if keras3:
        try:
            _, layers, containers = read_weights_file(path)
        except ValueError:
            layers = None  # no layer names (older Keras 3): keras.applications decides
        if layers is not None:
            return _load_keras3_file(backbone_model, name, path, layers, containers)
    if name not in APPLICATIONS:
        raise _unsupported(name, path)
    app = build_application(name, None)
    try:
        app.load_weights(path)
    except Exception as error:
        raise ValueError(
            f"Weights file {path!r} does not fit keras.applications.{APPLICATIONS[name]}"
            f"(include_top=False) ({error}). Use the `..._notop.h5` ImageNet file of "
            f"{APPLICATIONS[name]} or a .weights.h5 saved from it."
        ) from error
    return _load_exact(backbone_model, _application_layers(app, name), path)
