"""Named weight presets (a table of data) and resolving `weights=` to a local file.

A preset names a file the user makes once from an official release (nothing is ever
downloaded) and says which model it fits and the command that makes it (e.g.
`keras-deeplab convert --from-tflite ...`). `resolve_weights(name)` finds it in:

1. `$KERAS_DEEPLAB_WEIGHTS_DIR/<preset>.weights.h5`, if that variable is set;
2. `~/.keras/keras_deeplab/<preset>.weights.h5`.

`kind="model"` files hold a whole model (`weights=`); `kind="backbone"` files hold the
backbone sub-model only (`backbone_weights=`).
"""

import os
from pathlib import Path

WEIGHTS_DIR_ENV = "KERAS_DEEPLAB_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = os.path.join("~", ".keras", "keras_deeplab")
WEIGHTS_SUFFIX = ".weights.h5"
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


# Named presets: which model a file fits and how to make it. `{path}` in a command is the
# file the preset resolves to.
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
    """Names of the weight presets (`kind`: None, `"model"` or `"backbone"`).

    Example:
        >>> "imagenet_xception65" in list_presets("backbone")
        True
    """
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
