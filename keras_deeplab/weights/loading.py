"""Loading `.weights.h5` files and named weight presets, matched by layer name.

`load_weights(model, weights)` is what `weights=` of every builder and of
`create_model` calls. `weights` is a path to a Keras 3 weights file
(`model.save_weights("x.weights.h5")`, or a `.keras` archive) or the name of a
preset (`list_presets()`), which resolves to a local file the user made once
(nothing is ever downloaded):

1. `$KERAS_DEEPLAB_WEIGHTS_DIR/<preset>.weights.h5`, if that variable is set;
2. `~/.keras/keras_deeplab/<preset>.weights.h5`.

Each preset says which model it fits and the command that produces its file
from an official release (e.g. `keras-deeplab convert --from-tflite ...`).

Weights are matched by Keras layer name (the official slim scope names, see
`keras_deeplab.models`), not by the file's internal object paths, so a file
saved from a single-scale `DeepLabV2` loads into its `multi_scale=True` twin and
back. A file made for another class count loads everything except the logits
layers (`logits_semantic*` / `fc8*`) with one `UserWarning` (fine-tuning), or is
one `ClassCountMismatchError` with `class_mismatch="error"` (evaluation,
prediction, export); `weights_num_classes(weights)` reads that class count. Any
other difference (another backbone, head or setting) is one `ValueError` naming
the file and the layers that differ, and leaves the model untouched.

Files written by plain Keras from a compiled model (`model.save("m.keras")`,
`model.save_weights("m.weights.h5")` after `fit`) also hold the optimizer's
state in a top-level `optimizer` group (Keras 3.15: `optimizer/vars`, plus
`optimizer/inner_optimizer/vars` for a `LossScaleOptimizer`); it is not model
weights and is ignored.
"""

import io
import os
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import keras
import numpy as np

WEIGHTS_DIR_ENV = "KERAS_DEEPLAB_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = os.path.join("~", ".keras", "keras_deeplab")
WEIGHTS_SUFFIX = ".weights.h5"
# Class-logits layers: skipped (with a warning) when the class count differs.
LOGITS_LAYER = re.compile(r"^(logits_semantic|fc8)(_\d+)?$")
# Top-level groups of a weights file that hold training state, not layers: Keras 3
# writes the compiled optimizer's variables under `optimizer/` (checked with 3.15 for
# Adam, SGD and LossScaleOptimizer; metrics and losses write nothing).
TRAINING_STATE_GROUPS = ("optimizer",)
CLASS_MISMATCH = ("skip", "error")
_MAX_LISTED = 6
_TF_MODELS = "http://download.tensorflow.org/models/"
_TFLITE_GPU = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu/"


def _ckpt_command(tarball, model, num_classes):
    return (
        f"download and extract {_TF_MODELS}{tarball}.tar.gz, then: keras-deeplab convert "
        f"--from-tf-checkpoint <extracted dir>/model.ckpt --model {model} "
        f"--num-classes {num_classes} --out {{path}}"
    )


def _backbone_command(tarball, model):
    return (
        f"download and extract {_TF_MODELS}{tarball}.tar.gz, then: keras-deeplab convert "
        f"--from-tf-checkpoint <extracted dir>/model.ckpt --model {model} --backbone-only "
        f"--out {{path}}"
    )


# Named presets: which model a file fits and how to make it. `kind="model"` files
# hold a whole model (`weights=`); `kind="backbone"` files hold the backbone
# sub-model only (`backbone_weights=`). `{path}` is the file the preset resolves to.
PRESETS = {
    "pascal_voc_mnv2_dm05_os8": {
        "kind": "model",
        "model": "deeplabv3_mobilenetv2_dm05_os8",
        "num_classes": 21,
        "description": "DeepLab v3 MobileNetV2 dm0.5, OS8, PASCAL VOC 2012 (official TFLite "
        "release deeplabv3_257_mv_gpu.tflite).",
        "command": f"download {_TFLITE_GPU}deeplabv3_257_mv_gpu.tflite, then: keras-deeplab "
        "convert --from-tflite deeplabv3_257_mv_gpu.tflite --out {path}",
    },
    "pascal_voc_mnv2_dm05": {
        "kind": "model",
        "model": "deeplabv3_mobilenetv2_dm05",
        "num_classes": 21,
        "description": "DeepLab v3 MobileNetV2 dm0.5, PASCAL VOC train_aug, 70.19% val mIoU "
        "at OS16 (official checkpoint deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01).",
        "command": _ckpt_command(
            "deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01", "deeplabv3_mobilenetv2_dm05", 21
        ),
    },
    "pascal_voc_mnv2": {
        "kind": "model",
        "model": "deeplabv3_mobilenetv2",
        "num_classes": 21,
        "description": "DeepLab v3 MobileNetV2, PASCAL VOC train_aug, 75.32% val mIoU at OS16 "
        "(official checkpoint deeplabv3_mnv2_pascal_train_aug_2018_01_29).",
        "command": _ckpt_command(
            "deeplabv3_mnv2_pascal_train_aug_2018_01_29", "deeplabv3_mobilenetv2", 21
        ),
    },
    "pascal_voc_xception65": {
        "kind": "model",
        "model": "deeplabv3plus_xception65",
        "num_classes": 21,
        "description": "DeepLab v3+ Xception-65, PASCAL VOC train_aug, 82.20% val mIoU at OS16 "
        "(official checkpoint deeplabv3_pascal_train_aug_2018_01_04).",
        "command": _ckpt_command(
            "deeplabv3_pascal_train_aug_2018_01_04", "deeplabv3plus_xception65", 21
        ),
    },
    "cityscapes_mnv2": {
        "kind": "model",
        "model": "deeplabv3_mobilenetv2",
        "num_classes": 19,
        "description": "DeepLab v3 MobileNetV2, Cityscapes train_fine, 70.71% val mIoU at OS16 "
        "(official checkpoint deeplabv3_mnv2_cityscapes_train_2018_02_05).",
        "command": _ckpt_command(
            "deeplabv3_mnv2_cityscapes_train_2018_02_05", "deeplabv3_mobilenetv2", 19
        ),
    },
    "cityscapes_xception65": {
        "kind": "model",
        "model": "deeplabv3plus_xception65",
        "num_classes": 19,
        "description": "DeepLab v3+ Xception-65, Cityscapes train_fine, 78.79% val mIoU at OS16 "
        "(official checkpoint deeplabv3_cityscapes_train_2018_02_06).",
        "command": _ckpt_command(
            "deeplabv3_cityscapes_train_2018_02_06", "deeplabv3plus_xception65", 19
        ),
    },
    "ade20k_xception65": {
        "kind": "model",
        "model": "deeplabv3plus_xception65",
        "num_classes": 151,
        "description": "DeepLab v3+ Xception-65, ADE20K train, 45.65% val mIoU (OS8, multi-scale "
        "+ flip) (official checkpoint deeplabv3_xception_ade20k_train_2018_05_29).",
        "command": _ckpt_command(
            "deeplabv3_xception_ade20k_train_2018_05_29", "deeplabv3plus_xception65", 151
        ),
    },
    "imagenet_xception41": {
        "kind": "backbone",
        "backbone": "xception41",
        "model": "deeplabv3plus_xception41",
        "description": "Xception-41 ImageNet backbone (official checkpoint xception_41_2018_05_09).",
        "command": _backbone_command("xception_41_2018_05_09", "deeplabv3plus_xception41"),
    },
    "imagenet_xception65": {
        "kind": "backbone",
        "backbone": "xception65",
        "model": "deeplabv3plus_xception65",
        "description": "Xception-65 ImageNet backbone (official checkpoint "
        "deeplabv3_xception_2018_01_04).",
        "command": _backbone_command("deeplabv3_xception_2018_01_04", "deeplabv3plus_xception65"),
    },
    "imagenet_coco_xception65": {
        "kind": "backbone",
        "backbone": "xception65",
        "model": "deeplabv3plus_xception65",
        "description": "Xception-65 ImageNet + COCO backbone (official checkpoint "
        "xception_65_coco_pretrained_2018_10_02).",
        "command": _backbone_command(
            "xception_65_coco_pretrained_2018_10_02", "deeplabv3plus_xception65"
        ),
    },
    "imagenet_xception71": {
        "kind": "backbone",
        "backbone": "xception71",
        "model": "deeplabv3plus_xception71",
        "description": "Xception-71 ImageNet backbone (official checkpoint xception_71_2018_05_09).",
        "command": _backbone_command("xception_71_2018_05_09", "deeplabv3plus_xception71"),
    },
    "imagenet_resnet50_beta": {
        "kind": "backbone",
        "backbone": "resnet50_beta",
        "model": "deeplabv3plus_resnet50_beta",
        "description": "ResNet-v1-50 beta ImageNet backbone (official checkpoint "
        "resnet_v1_50_2018_05_04).",
        "command": _backbone_command("resnet_v1_50_2018_05_04", "deeplabv3plus_resnet50_beta"),
    },
    "imagenet_resnet101_beta": {
        "kind": "backbone",
        "backbone": "resnet101_beta",
        "model": "deeplabv3plus_resnet101_beta",
        "description": "ResNet-v1-101 beta ImageNet backbone (official checkpoint "
        "resnet_v1_101_2018_05_04).",
        "command": _backbone_command("resnet_v1_101_2018_05_04", "deeplabv3plus_resnet101_beta"),
    },
}


def list_presets(kind=None):
    """Names of the weight presets (`kind`: None, `"model"` or `"backbone"`)."""
    return sorted(name for name, p in PRESETS.items() if kind is None or p["kind"] == kind)


def weights_dirs():
    """Folders searched for preset files, in order."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(Path(DEFAULT_WEIGHTS_DIR).expanduser())
    return dirs


def preset_command(name, path=None):
    """The command that creates the file of preset `name` (at `path`, default: first folder)."""
    if path is None:
        path = weights_dirs()[0] / f"{name}{WEIGHTS_SUFFIX}"
    return PRESETS[name]["command"].format(path=path)


def presets_markdown():
    """Markdown table of the presets (for the README)."""
    rows = [
        "| preset | kind | model | classes | description |",
        "|---|---|---|---|---|",
    ]
    for name in list_presets():
        p = PRESETS[name]
        rows.append(
            f"| `{name}` | {p['kind']} | `{p['model']}` | {p.get('num_classes', '-')} | "
            f"{p['description']} |"
        )
    return "\n".join(rows)


def _looks_like_path(weights):
    text = str(weights)
    return (
        isinstance(weights, os.PathLike)
        or os.sep in text
        or "/" in text
        or text.endswith((".h5", ".keras", ".hdf5"))
        or os.path.exists(text)
    )


def resolve_weights(weights):
    """Local file path of `weights` (a path or a preset name); never downloads.

    Raises:
        FileNotFoundError: the path does not exist, or the preset's file has not
            been made yet (the message says where it looked and the command).
        ValueError: `weights` is neither an existing path nor a preset name.

    Example:
        `path = resolve_weights("pascal_voc_mnv2_dm05_os8")`
    """
    if weights is None:
        raise ValueError("weights is None: nothing to resolve.")
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be a file path or a preset name ({', '.join(list_presets())}); "
            f"got {weights!r}."
        )
    if str(weights) in PRESETS and not os.path.exists(str(weights)):
        name = str(weights)
        candidates = [d / f"{name}{WEIGHTS_SUFFIX}" for d in weights_dirs()]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        looked = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"Weights preset {name!r} ({PRESETS[name]['description']}) has no local file; "
            f"looked for {looked}. Nothing is downloaded automatically: create it with "
            f"`{preset_command(name, candidates[0])}` (set ${WEIGHTS_DIR_ENV} to use another "
            f"folder)."
        )
    if _looks_like_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
        return str(path)
    raise ValueError(
        f"Unknown weights {weights!r}: not an existing file and not a preset. "
        f"Presets: {', '.join(list_presets())}."
    )


# --------------------------------------------------------------------------
# Reading weight files and models as {layer-name path: arrays / layer}.


class UnsafeArchiveError(ValueError):
    """A `.keras` archive carries Python code (a Lambda layer / serialized function)."""


def _code_objects(node, found):
    """Names of Lambda layers / serialized Python lambdas anywhere in a Keras config."""
    if isinstance(node, dict):
        if node.get("class_name") == "Lambda":
            found.append(str((node.get("config") or {}).get("name", "Lambda")))
            return found  # its `function` entry is the same code
        if node.get("class_name") == "__lambda__":
            found.append("a serialized lambda")
        for value in node.values():
            _code_objects(value, found)
    elif isinstance(node, list):
        for value in node:
            _code_objects(value, found)
    return found


def _refuse_code(path, archive):
    """Refuses `.keras` archives holding code, as `keras.saving.load_model(safe_mode=True)`.

    Only the weights are read from a `.keras` file (its config is never deserialized, nor is
    anything unpickled), but an archive carrying a Lambda layer is not a DeepLab model of
    this package and may be a trap: it is refused outright.
    """
    import json

    if "config.json" not in archive.namelist():
        return
    try:
        config = json.loads(archive.read("config.json"))
    except ValueError:
        raise ValueError("its config.json is not valid JSON") from None
    found = _code_objects(config, [])
    if found:
        raise UnsafeArchiveError(
            f"Refusing {path!r}: it contains Python code (Lambda: "
            f"{', '.join(found[:5])}), which safe mode does not load. Fix: rebuild "
            "the model without Lambda layers, or save only its weights "
            "(model.save_weights('x.weights.h5')) from code you trust."
        )


@contextmanager
def open_weights_file(path):
    """Opens the HDF5 weights of a `.weights.h5` / legacy `.h5` file or a `.keras` archive."""
    path = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise ValueError("the archive has no model.weights.h5")
                _refuse_code(path, archive)
                data = io.BytesIO(archive.read("model.weights.h5"))
            handle = h5py.File(data, "r")
        else:
            handle = h5py.File(path, "r")
    except UnsafeArchiveError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Cannot read weights file {path!r}: not a Keras weights file "
            f"(.weights.h5, .keras or HDF5 .h5) ({error})."
        ) from error
    try:
        yield handle
    finally:
        handle.close()


def is_keras3_weights(handle):
    """True for the Keras 3 layout (`layers/.../vars`), False for legacy HDF5 (`layer_names`)."""
    return "vars" in handle and "layer_names" not in handle.attrs


def _read_dataset(dataset):
    value = dataset[()]
    if dataset.attrs.get("dtype") == "bfloat16":
        import ml_dtypes

        value = np.asarray(value, dtype=ml_dtypes.bfloat16)
    return np.asarray(value)


def read_weights_file(path):
    """Reads a Keras 3 weights file by layer name.

    Returns:
        `(root_name, layers, containers)`: `layers` maps the path of layer names
        below the root (e.g. `("mobilenetv2_backbone", "Conv")`) to the list of
        arrays (Keras' own variable order); `containers` is the set of paths of
        nested models.

    Raises:
        ValueError: the file cannot be read, is a legacy HDF5 file, or was
            written by a Keras version that does not store layer names.
    """
    with open_weights_file(path) as handle:
        if not is_keras3_weights(handle):
            raise ValueError(
                f"Weights file {str(path)!r} is a legacy (Keras 2) HDF5 file; keras_deeplab "
                f"loads Keras 3 weights files (model.save_weights('x.weights.h5'))."
            )
        layers, containers = {}, set()
        root_name = _visit(handle, None, layers, containers, path)
    return root_name, layers, containers


def _visit(group, names, layers, containers, path):
    """Collects `vars` groups below `group`; `names` is the enclosing layer-name path.

    The root's own `vars` names the saved model itself (path `()`); every other
    `vars` group names one layer, whose path is the names of its enclosing models.
    """
    root_name = None
    if "vars" in group and isinstance(group["vars"], h5py.Group):
        node = group["vars"]
        own_name = node.attrs.get("name")
        if own_name is None:
            raise ValueError(
                f"Weights file {str(path)!r} stores no layer names (written by an older Keras "
                f"3); re-save it with this Keras version or load it with model.load_weights."
            )
        own_name = own_name.decode() if isinstance(own_name, bytes) else str(own_name)
        if names is None:
            root_name, names = own_name, ()
        else:
            names = (*names, own_name)
        keys = sorted(node.keys(), key=int)
        if keys:
            layers[names] = [_read_dataset(node[k]) for k in keys]
    at_root = group.name == "/"
    names = () if names is None else names
    before = len(layers)
    for key, child in group.items():
        if at_root and key in TRAINING_STATE_GROUPS:
            continue
        if key != "vars" and isinstance(child, h5py.Group):
            _visit(child, names, layers, containers, path)
    if names and len(layers) > before and names not in layers:
        containers.add(names)
    return root_name


def model_layers(model):
    """Maps the path of layer names below `model` to every layer that owns variables.

    Uses each layer's `save_own_variables`, i.e. exactly what Keras writes to a
    weights file. Returns `(layers, containers)` like `read_weights_file`.
    """
    layers, containers = {}, set()

    def walk(layer, names):
        for sub in layer.layers if isinstance(layer, keras.Model) else ():
            path = (*names, sub.name)
            store = {}
            sub.save_own_variables(store)
            if store:
                layers[path] = sub
            if isinstance(sub, keras.Model):
                containers.add(path)
                walk(sub, path)

    walk(model, ())
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
    if logits:
        warnings.warn(
            f"Loaded {path!r} except the logits layer(s) {', '.join(sorted(logits))}: the file "
            f"has {file_classes} classes, the model {classes}. Those layers keep their initial "
            f"weights; train them on your classes.",
            UserWarning,
            stacklevel=2,
        )
    return model
