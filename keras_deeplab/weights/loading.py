"""Loading weights files and presets into a model, matched by layer name.

`load_weights(model, weights)` is what `weights=` of every builder and of `create_model`
calls. `weights` is a path to a Keras 3 weights file (`model.save_weights("x.weights.h5")`,
or a `.keras` archive) or the name of a preset (`keras_deeplab.weights.presets`).

Weights are matched by Keras layer name (the official slim scope names, see
`keras_deeplab.models`), not by the file's internal object paths, so a file saved from a
single-scale `DeepLabV2` loads into its `multi_scale=True` twin and back. A file made for
another class count loads everything except the logits layers (`logits_semantic*` /
`fc8*`) with one `UserWarning` (fine-tuning), or is one `ClassCountMismatchError` with
`class_mismatch="error"` (evaluation, prediction, export); `weights_num_classes(weights)`
reads that class count. A file of the plain network loads into a model with training-only
auxiliary heads (`aux_head=True`), whose classifiers then keep their initial weights, with one
`UserWarning`. Any other difference (another backbone, head or setting) is one
`ValueError` naming the file and the layers that differ, and leaves the model untouched.
"""

import os
import re
import warnings

import keras

from keras_deeplab.weights.presets import PRESETS, resolve_weights
from keras_deeplab.weights.weights_file import read_weights_file

# Class-logits layers: skipped (with a warning) when the class count differs.
LOGITS_LAYER = re.compile(r"^(logits_semantic|fc8)(_\d+)?$")
CLASS_MISMATCH = ("skip", "error")
_MAX_LISTED = 6


def model_layers(model):
    """Maps the path of layer names below `model` to every layer that owns variables.

    Uses each layer's `save_own_variables`, i.e. exactly what Keras writes to a
    weights file. Returns `(layers, containers)` like `read_weights_file`.
    """
    layers, containers, seen = {}, set(), set()

    def walk(layer, names):
        for sub in layer.layers if isinstance(layer, keras.Model) else ():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            path = (*names, sub.name)
            store = {}
            sub.save_own_variables(store)
            if store:
                layers[path] = sub
            if isinstance(sub, keras.Model):
                containers.add(path)
                walk(sub, path)

    walk(model, ())
    # A model with training-only auxiliary heads keeps them in a second graph, an attribute
    # that Keras saves after the main layers: only the layers the main graph does not hold.
    training = getattr(model, "_training_graph", None)
    if training is not None:
        containers.add((training.name,))
        walk(training, (training.name,))
    return layers, containers


def layer_shapes(layer):
    """Shapes of the variables `layer` saves, in Keras' order."""
    store = {}
    layer.save_own_variables(store)
    return [tuple(store[str(i)].shape) for i in range(len(store))]


def _names_unique(paths):
    """True when the layer names alone identify the layers (the usual case)."""
    names = [p[-1] for p in paths]
    return len(set(names)) == len(names)


def match_layers(file_layers, target_layers):
    """Matches file entries and model layers by name and compares shapes.

    Keys are layer names, or `/`-joined name paths if a name repeats.

    Returns:
        `(pairs, missing, extra, mismatched)`: `pairs` maps a key to
        `(arrays, layer)` for equal shapes; `missing` are model keys absent from
        the file, `extra` file keys absent from the model, `mismatched` maps a key
        to `(file shapes, model shapes, arrays, layer)`.
    """
    by_name = _names_unique(file_layers) and _names_unique(target_layers)

    def key(path):
        return path[-1] if by_name else "/".join(path)

    file_by_key = {key(p): a for p, a in file_layers.items()}
    model_by_key = {key(p): layer for p, layer in target_layers.items()}
    pairs, mismatched = {}, {}
    for k, layer in model_by_key.items():
        if k not in file_by_key:
            continue
        arrays = file_by_key[k]
        file_shapes = [tuple(a.shape) for a in arrays]
        shapes = layer_shapes(layer)
        if file_shapes == shapes:
            pairs[k] = (arrays, layer)
        else:
            mismatched[k] = (file_shapes, shapes, arrays, layer)
    missing = sorted(set(model_by_key) - set(file_by_key))
    extra = sorted(set(file_by_key) - set(model_by_key))
    return pairs, missing, extra, mismatched


def assign(pairs):
    """Loads every `(arrays, layer)` pair with the layer's own `load_own_variables`."""
    for arrays, layer in pairs.values():
        layer.load_own_variables({str(i): a for i, a in enumerate(arrays)})


def _listed(items):
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _shapes(shapes, other):
    """The first variable's shape (kernel / gamma) when that is where they differ."""
    if len(shapes) == len(other) and shapes and shapes[0] != other[0]:
        return str(shapes[0])
    return str(shapes)


def describe_mismatch(path, missing, extra, mismatched, file_containers, containers):
    """One readable sentence per kind of difference (for the error message)."""
    parts = []
    # Sub-models by name (e.g. "resnet50_backbone" vs "mobilenetv2_backbone").
    file_models = {c[-1] for c in file_containers if not c[-1].endswith("_single_scale")}
    models = {c[-1] for c in containers if not c[-1].endswith("_single_scale")}
    if file_models != models and (file_models or models):
        parts.append(
            f"the file holds sub-model(s) {sorted(file_models)} but the model has {sorted(models)}"
        )
    if mismatched:
        shown = [
            f"{k}: file {_shapes(fs, ms)} vs model {_shapes(ms, fs)}"
            for k, (fs, ms, _, _) in sorted(mismatched.items())
        ]
        parts.append(f"{len(mismatched)} layer(s) differ in shape ({_listed(shown)})")
    if missing:
        parts.append(f"{len(missing)} model layer(s) are not in the file ({_listed(missing)})")
    if extra:
        parts.append(f"{len(extra)} file layer(s) are not in the model ({_listed(extra)})")
    return f"Weights file {str(path)!r} does not match the model: " + "; ".join(parts) + "."


def _logits_width(key, shapes):
    """Class count of a logits layer (`key` matches `LOGITS_LAYER`) from its variable shapes.

    The kernel's last axis and every other variable (the bias) give the same count; None
    for any other layer.
    """
    if not LOGITS_LAYER.match(key.rsplit("/", 1)[-1]) or not shapes or not shapes[0]:
        return None
    classes = shapes[0][-1]
    if any(tuple(shape) != (classes,) for shape in shapes[1:]):
        return None
    return int(classes)


def _logits_classes(key, file_shapes, shapes):
    """`(file classes, model classes)` if `key` is a logits conv differing only in classes."""
    if len(file_shapes) != len(shapes) or not shapes or file_shapes[0][:-1] != shapes[0][:-1]:
        return None
    file_classes, classes = _logits_width(key, file_shapes), _logits_width(key, shapes)
    if file_classes is None or classes is None:
        return None
    return file_classes, classes


class ClassCountMismatchError(ValueError):
    """A weights file's logits predict another number of classes than the model.

    Attributes:
        path: the weights file.
        file_classes: classes of the file's logits layer.
        model_classes: classes of the model's logits layer.
    """

    def __init__(self, path, file_classes, model_classes):
        self.path, self.file_classes, self.model_classes = path, file_classes, model_classes
        super().__init__(
            f"{path} holds {file_classes} classes, the model {model_classes}: build it with "
            f"num_classes={file_classes} (CLI: --num-classes {file_classes}, or leave "
            "--num-classes out to infer it from the weights)"
        )


def _one_count(path, counts):
    """The single class count of `counts` (`{layer: classes}`), else a `ValueError`."""
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"Weights file {path!r}: the logits layers disagree on the class counts "
            f"{sorted(set(counts.values()))}."
        )
    return next(iter(counts.values()))


def weights_num_classes(weights):
    """Number of classes of the logits layer(s) stored in a weights file, or None.

    Args:
        weights: a `.weights.h5` / `.keras` path or a preset name (as `resolve_weights`).

    Returns:
        The class count, or None when the file has no logits layer (backbone-only files).

    Raises:
        ValueError: unreadable file, or logits layers with different class counts.

    Example:
        `create_model(name, num_classes=weights_num_classes("camvid.weights.h5"), ...)`
    """
    path = resolve_weights(weights)
    _, file_layers, _ = read_weights_file(path)
    counts = {}
    for names, arrays in file_layers.items():
        classes = _logits_width(names[-1], [tuple(a.shape) for a in arrays])
        if classes is not None:
            counts["/".join(names)] = classes
    return _one_count(path, counts) if counts else None


def _new_training_only_heads(model, targets, missing):
    """The model's training-only auxiliary layers (only in its training graph), sorted, when
    the file has none of them; else `[]` (a file that has some of them must match)."""
    training = getattr(model, "_training_graph", None)
    if training is None:
        return []
    only = [p for p in targets if p[0] == training.name]
    keys = {p[-1] for p in only} | {"/".join(p) for p in only}
    found = [k for k in missing if k in keys]
    return sorted(found) if len(found) == len(only) else []


def load_weights(model, weights, *, class_mismatch="skip"):
    """Loads a weights file or preset into `model` (matched by layer name, bitwise).

    A file for another class count loads everything but the logits layers and
    emits one `UserWarning` (`class_mismatch="skip"`, right for fine-tuning), or
    raises `ClassCountMismatchError` (`class_mismatch="error"`, for evaluation,
    prediction and export). Any other mismatch raises one `ValueError` naming the
    file and what differs. Nothing is changed in the model when it raises.

    Args:
        model: a keras_deeplab model (also `MultiScaleInputs`).
        weights: a `.weights.h5` / `.keras` path or a preset name (`list_presets()`).
        class_mismatch: `"skip"` or `"error"` (see above).

    Example:
        `load_weights(model, "pascal_voc_mnv2_dm05_os8", class_mismatch="error")`
    """
    if class_mismatch not in CLASS_MISMATCH:
        raise ValueError(
            f"class_mismatch must be one of {', '.join(map(repr, CLASS_MISMATCH))}; "
            f"got {class_mismatch!r}."
        )
    name = str(weights)
    if name in PRESETS and PRESETS[name]["kind"] == "backbone" and not os.path.exists(name):
        raise ValueError(
            f"Preset {name!r} holds {PRESETS[name]['backbone']} backbone weights only; pass it "
            f"as backbone_weights={name!r} (e.g. create_model({PRESETS[name]['model']!r}, "
            f"backbone_weights={name!r}))."
        )
    path = resolve_weights(weights)
    _, file_layers, file_containers = read_weights_file(path)
    targets, containers = model_layers(model)
    pairs, missing, extra, mismatched = match_layers(file_layers, targets)
    untrained = _new_training_only_heads(model, targets, missing)
    if untrained:  # a file of the plain network: the training-only classifiers start fresh
        missing = [k for k in missing if k not in untrained]
        containers = {c for c in containers if c != (model._training_graph.name,)}

    logits = {}
    for key, (file_shapes, shapes, _, _) in mismatched.items():
        classes = _logits_classes(key, file_shapes, shapes)
        if classes is not None:
            logits[key] = classes
    others = {k: v for k, v in mismatched.items() if k not in logits}
    if missing or extra or others:
        message = describe_mismatch(path, missing, extra, mismatched, file_containers, containers)
        if logits:
            file_classes, classes = next(iter(logits.values()))
            message += f" (The logits also differ: {file_classes} classes in the file, {classes} in the model.)"
        raise ValueError(message)
    if logits:
        file_classes, classes = _one_count(path, logits)
        if class_mismatch == "error":
            raise ClassCountMismatchError(path, file_classes, classes)

    assign(pairs)
    if untrained:
        warnings.warn(
            f"Loaded {path!r} into the network; the file has no training-only auxiliary "
            f"classifier(s) ({', '.join(untrained)}): they keep their initial weights and "
            f"train from there (inference and exports do not use them).",
            UserWarning,
            stacklevel=2,
        )
    if logits:
        warnings.warn(
            f"Loaded {path!r} except the logits layer(s) {', '.join(sorted(logits))}: the file "
            f"has {file_classes} classes, the model {classes}. Those layers keep their initial "
            f"weights; train them on your classes.",
            UserWarning,
            stacklevel=2,
        )
    return model
