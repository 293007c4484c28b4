"""Official DeepLab TF1 checkpoint converter.

Loads the TF-slim checkpoints of the official model zoo
(`tensorflow/models:research/deeplab/g3doc/model_zoo.md`: xception_41/65/71,
resnet_v1_50/101_beta, mobilenet_v2; with or without decoder; 21, 19 or 151 classes)
into models built by `keras_deeplab`. Variable names follow the slim scopes of
`research/deeplab/model.py`, `core/xception.py`, `core/resnet_v1_beta.py`,
`core/feature_extractor.py` and `research/slim/nets/mobilenet/mobilenet_v2.py`:
a Keras layer `<scope with "_">` holds the variables `<network>/<scope>/...` (backbone)
or `<scope>/...` (head), e.g.

* `xception_65/entry_flow/conv1_1/weights` -> backbone layer `entry_flow_conv1_1`, `kernel`,
* `aspp1_depthwise/depthwise_weights` -> layer `aspp1_depthwise`, `kernel`,
* `decoder/feature_projection0/BatchNorm/gamma` -> `decoder_feature_projection0_BatchNorm`,
* `logits/semantic/biases` -> layer `logits_semantic`, `bias`.

Conv kernels (HWIO) and depthwise kernels (`[kh, kw, C, 1]`) have the same layout in
both frameworks and are copied as they are.

Ignored on purpose: `global_step`; optimizer slots of the official `train.py`
(`--optimizer momentum|adam`: `*/Momentum`, `*/Adam`, `*/Adam_1`, `beta1_power`,
`beta2_power`); ImageNet classifier heads of backbone checkpoints (`<network>/logits/*`,
`MobilenetV2/Logits/*`, `MobilenetV2/Conv_1/*`). Every other difference (model weights
missing from the checkpoint, unused checkpoint variables, shape or dtype mismatches) is
reported in one `ValueError`, and nothing is assigned unless everything matches.
"""

import os
import re
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

# Backbone registry key -> slim network scope (`feature_extractor.py:name_scope`).
NETWORK_SCOPES = {
    "xception41": "xception_41",
    "xception65": "xception_65",
    "xception71": "xception_71",
    "resnet50_beta": "resnet_v1_50",
    "resnet101_beta": "resnet_v1_101",
    "mobilenetv2": "MobilenetV2",
    "mobilenetv2_dm05": "MobilenetV2",
}
_SCOPE_BACKBONES = {
    "xception_41": ("xception41",),
    "xception_65": ("xception65",),
    "xception_71": ("xception71",),
    "resnet_v1_50": ("resnet50_beta",),
    "resnet_v1_101": ("resnet101_beta",),
    "MobilenetV2": ("mobilenetv2", "mobilenetv2_dm05"),
}

# Keras layer name (slim scope with "/" -> "_") -> slim scope, one regex per naming rule.
_BACKBONE_RULES = (
    re.compile(r"^(entry_flow)_(conv1_\d)$"),  # xception stem
    re.compile(
        r"^(entry_flow|middle_flow|exit_flow)_(block\d+)_(unit_\d+)_(xception_module)_"
        r"(separable_conv\d_depthwise|separable_conv\d_pointwise|shortcut)$"
    ),
    re.compile(r"^(conv1_\d)$"),  # resnet beta stem
    re.compile(r"^(block\d+)_(unit_\d+)_(bottleneck_v1)_(conv\d|shortcut)$"),
    re.compile(r"^(Conv)$"),  # mobilenet_v2 stem
    re.compile(r"^(expanded_conv(?:_\d+)?)_(expand|depthwise|project)$"),
)
_HEAD_RULES = (
    re.compile(r"^(image_pooling)$"),
    re.compile(r"^(aspp\d+(?:_depthwise|_pointwise)?)$"),
    re.compile(r"^(concat_projection)$"),
    re.compile(r"^(decoder)_(feature_projection\d+)$"),
    re.compile(r"^(decoder)_(decoder_conv\d+(?:_depthwise|_pointwise)?)$"),
    re.compile(r"^(logits)_(semantic(?:_\d+)?)$"),
)
_BN_SUFFIX = "_BatchNorm"

_OPTIMIZER_SLOTS = ("Momentum", "Adam", "Adam_1")
_OPTIMIZER_GLOBALS = ("global_step", "beta1_power", "beta2_power")
_MAX_LISTED = 30


def _layer_scope(name, rules):
    for rule in rules:
        match = rule.match(name)
        if match:
            return "/".join(match.groups())
    return None


def _scope_of(layer_name, rules):
    """Slim scope of a Keras layer name (`X_BatchNorm` -> `scope(X)/BatchNorm`), or None."""
    if layer_name.endswith(_BN_SUFFIX):
        conv_scope = _layer_scope(layer_name[: -len(_BN_SUFFIX)], rules)
        return None if conv_scope is None else f"{conv_scope}/BatchNorm"
    return _layer_scope(layer_name, rules)


def _layer_variables(layer):
    """`(keras attribute, slim variable name)` pairs of a layer, or None if unsupported."""
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = [("gamma", "gamma")] if layer.scale else []
        pairs += [("beta", "beta")] if layer.center else []
        return pairs + [("moving_mean", "moving_mean"), ("moving_variance", "moving_variance")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        pairs = [("kernel", "depthwise_weights")]
    elif isinstance(layer, keras.layers.Conv2D):
        pairs = [("kernel", "weights")]
    else:
        return None
    return pairs + ([("bias", "biases")] if layer.use_bias else [])


def _split_backbone(model):
    """`(backbone, head layers)`; a model without a nested backbone is a backbone itself."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested:
        return model, []
    if len(nested) > 1:
        raise ValueError(
            f"Model {model.name!r} nests several sub-models ({[m.name for m in nested]}); "
            "load_tf_checkpoint expects a DeepLab model with one backbone or a bare backbone."
        )
    return nested[0], [layer for layer in model.layers if layer is not nested[0]]


def network_scope(model):
    """Slim network scope (e.g. `"xception_65"`) of a model's backbone, from its layers."""
    backbone, _ = _split_backbone(model)
    names = {layer.name for layer in backbone.layers}
    if "entry_flow_conv1_1" in names:
        entry = {n.split("_")[2] for n in names if re.match(r"^entry_flow_block\d+_", n)}
        middle = {n.split("_")[4] for n in names if re.match(r"^middle_flow_block1_unit_\d+_", n)}
        depth = {(3, 8): 41, (3, 16): 65, (5, 16): 71}.get((len(entry), len(middle)))
        if depth is not None:
            return f"xception_{depth}"
    elif "conv1_1" in names and "block1_unit_1_bottleneck_v1_conv1" in names:
        units = {n.split("_")[2] for n in names if re.match(r"^block3_unit_\d+_", n)}
        depth = {6: 50, 23: 101}.get(len(units))
        if depth is not None:
            return f"resnet_v1_{depth}"
    elif "Conv" in names and "expanded_conv_16_project" in names:
        return "MobilenetV2"
    raise ValueError(
        f"The backbone {backbone.name!r} of model {model.name!r} has no official DeepLab TF1 "
        f"checkpoint. Official checkpoints exist for the backbones {', '.join(NETWORK_SCOPES)} "
        "(models such as deeplabv3plus_xception65, deeplabv3_mobilenetv2, "
        "deeplabv3plus_resnet101_beta); the Caffe-layout resnet50/101 and vgg16 use "
        "keras.applications weights instead."
    )


def official_variable_names(model, backbone_only=False):
    """Official checkpoint variable name -> `(keras layer, weight attribute)` for `model`.

    Covers every weight of `model` (of its backbone only with `backbone_only=True`), e.g.
    `"xception_65/entry_flow/conv1_1/BatchNorm/gamma" -> (layer, "gamma")`.
    Raises a ValueError naming the layers that have no official counterpart.
    """
    net = network_scope(model)
    backbone, head_layers = _split_backbone(model)
    groups = [(backbone.layers, _BACKBONE_RULES, f"{net}/")]
    if not backbone_only:
        groups.append((head_layers, _HEAD_RULES, ""))
    names, unknown = {}, []
    for layers, rules, prefix in groups:
        for layer in layers:
            if not layer.weights:
                continue
            scope = _scope_of(layer.name, rules)
            pairs = _layer_variables(layer)
            if scope is None or pairs is None:
                unknown.append(f"{layer.name} ({type(layer).__name__})")
                continue
            for attr, var in pairs:
                names[f"{prefix}{scope}/{var}"] = (layer, attr)
    if unknown:
        more = f" ... and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(
            f"Model {model.name!r} has {len(unknown)} layer(s) with no official DeepLab "
            f"checkpoint variable: {', '.join(unknown[:10])}{more}. Official checkpoints cover the DeepLab v3/v3+ heads "
            "(image pooling, ASPP, decoder, logits) on xception/resnet_beta/mobilenetv2."
        )
    n_weights = len(model.weights) if not backbone_only else len(backbone.weights)
    if len(names) != n_weights:  # a layer's weights not all named (should not happen)
        raise ValueError(f"Model {model.name!r}: {n_weights} weights but {len(names)} names.")
    return names


def is_ignored_variable(name):
    """True for checkpoint variables skipped on purpose (step counter, optimizer slots,
    ImageNet classifier heads)."""
    parts = name.split("/")
    if name in _OPTIMIZER_GLOBALS or parts[-1] in _OPTIMIZER_SLOTS:
        return True
    if len(parts) > 1 and parts[0] in _SCOPE_BACKBONES and parts[1] == "logits":
        return True
    return parts[0] == "MobilenetV2" and len(parts) > 1 and parts[1] in ("Logits", "Conv_1")


def resolve_checkpoint_prefix(path):
    """Checkpoint prefix from a prefix, a `.index`/`.data-*` file or a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0][: -len(".index")])
        raise ValueError(
            f"{path} is a directory with {len(indexes)} checkpoints (*.index files); pass the "
            "checkpoint prefix, e.g. .../model.ckpt-30000 (without .index / .data-*)."
        )
    match = re.match(r"^(.*)\.(index|data-\d+-of-\d+|meta)$", path)
    if match:
        return match.group(1)
    return path


def _open_checkpoint(prefix):
    resolved = resolve_checkpoint_prefix(prefix)
    if not os.path.exists(resolved + ".index"):
        raise ValueError(
            f"No TF1 checkpoint at {prefix!s}: {resolved}.index does not exist. Pass the "
            "checkpoint prefix of an extracted model-zoo tarball, e.g. "
            "deeplabv3_pascal_train_aug/model.ckpt (the files model.ckpt.index and "
            "model.ckpt.data-00000-of-00001 must exist)."
        )
    try:
        reader = tf.train.load_checkpoint(resolved)
    except Exception as err:  # corrupt or foreign file: one clear message
        raise ValueError(
            f"Cannot read the TF checkpoint {resolved}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Pass the prefix of an official "
            "DeepLab TF1 checkpoint (model.ckpt*), not a frozen graph, SavedModel or TFLite file."
        ) from None
    return resolved, reader


@dataclass
class CheckpointMatch:
    """How a checkpoint's variables match a model (see `match_tf_checkpoint`)."""

    prefix: str
    model_name: str
    network: str
    backbone_only: bool
    assignments: dict  # checkpoint name -> (layer, attribute)
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # (name, model shape)
    unused: list = field(default_factory=list)  # (name, checkpoint shape)
    mismatched: list = field(default_factory=list)  # (name, ckpt shape/dtype, model shape/dtype)
    hints: list = field(default_factory=list)

    @property
    def ok(self):
        return not (self.missing or self.unused or self.mismatched)

    def error_message(self):
        scope = f" (backbone {self.network}/ only)" if self.backbone_only else ""
        n = len(self.missing) + len(self.unused) + len(self.mismatched)
        lines = [
            f"Checkpoint {self.prefix} does not match model {self.model_name!r}{scope}: "
            f"{n} problem(s); nothing was loaded."
        ]
        sections = (
            ("shape/dtype mismatches (checkpoint vs model)", self.mismatched),
            ("model weights missing from the checkpoint", self.missing),
            ("checkpoint variables the model does not use", self.unused),
        )
        for title, items in sections:
            if not items:
                continue
            lines.append(f"{title} [{len(items)}]:")
            for item in items[:_MAX_LISTED]:
                if len(item) == 3:
                    lines.append(f"  {item[0]}: checkpoint {item[1]} vs model {item[2]}")
                else:
                    lines.append(f"  {item[0]} {item[1]}")
            if len(items) > _MAX_LISTED:
                lines.append(f"  ... and {len(items) - _MAX_LISTED} more")
        lines.append("How to fix:")
        lines.extend(f"  - {hint}" for hint in self.hints)
        lines.append(
            "  - build the model the checkpoint was trained with, e.g. `keras-deeplab convert "
            "--from-tf-checkpoint PREFIX --model NAME --num-classes N --out W.weights.h5` or "
            "`create_model(NAME, num_classes=N)` (see `inspect_tf_checkpoint(PREFIX)`)."
        )
        return "\n".join(lines)


def _head_summary(names):
    """Head layout of a set of checkpoint variable names."""
    if any(n.startswith("aspp1_depthwise/") for n in names):
        aspp = "separable"
    elif any(n.startswith("aspp1/") for n in names):
        aspp = "regular"
    elif any(n.startswith(("aspp0/", "image_pooling/")) for n in names):
        aspp = "none"  # image pooling + 1x1 only (the MobileNetV2 head)
    else:
        aspp = None
    return {
        "aspp": aspp,
        "image_pooling": any(n.startswith("image_pooling/") for n in names),
        "decoder": any(n.startswith("decoder/") for n in names),
        "dpc": any(n.startswith("meta_architecture/") for n in names),
    }


def _describe(shapes):
    """Network, classes, head layout and matching registry models of a variable map."""
    from keras_deeplab.backbones import resolve_backbone_name
    from keras_deeplab.models import DeepLabV3, DeepLabV3Plus, list_models, model_config

    names = [n for n in shapes if not is_ignored_variable(n)]
    nets = sorted({n.split("/")[0] for n in names if n.split("/")[0] in _SCOPE_BACKBONES})
    network = nets[0] if len(nets) == 1 else None
    backbones = list(_SCOPE_BACKBONES.get(network, ()))
    if network == "MobilenetV2" and "MobilenetV2/Conv/weights" in shapes:
        dm05 = shapes["MobilenetV2/Conv/weights"][-1] == 16
        backbones = ["mobilenetv2_dm05" if dm05 else "mobilenetv2"]
    head = _head_summary(names)
    logits = shapes.get("logits/semantic/weights")
    num_classes = int(logits[-1]) if logits else None
    backbone_only = bool(names) and all(n.split("/")[0] in _SCOPE_BACKBONES for n in names)
    suggested = []
    if not backbone_only and head["image_pooling"] and not head["dpc"]:
        # Registry models keep the official head defaults: separable ASPP, or image
        # pooling + 1x1 only on MobileNetV2; OS variants (same weights) are left out.
        builder = DeepLabV3Plus if head["decoder"] else DeepLabV3
        for name in list_models():
            model_builder, config = model_config(name)
            if model_builder is not builder or not config.get("backbone"):
                continue  # another architecture (FCN, U-Net, ...): no DeepLab checkpoint
            backbone = resolve_backbone_name(config["backbone"])
            default_aspp = "none" if backbone.startswith("mobilenetv2") else "separable"
            if (
                backbone in backbones
                and head["aspp"] == default_aspp
                and config.get("head", "aspp") == "aspp"
                and "output_stride" not in config
            ):
                suggested.append(name)
    return {
        "networks": nets,
        "network": network,
        "backbones": backbones,
        "num_classes": num_classes,
        **head,
        "backbone_only": backbone_only,
        "suggested_models": suggested,
        "num_variables": len(names),
    }


def inspect_tf_checkpoint(ckpt_prefix):
    """Describes an official checkpoint: network, classes, head layout, matching models.

    Returns a dict with `prefix`, `network` (e.g. `"xception_65"`, None if unknown),
    `networks` (all network scopes found), `backbones` (registry keys), `num_classes`
    (None for backbone-only checkpoints), `aspp` (`"separable"`, `"regular"`, `"none"` or
    None), `image_pooling`, `decoder`, `dpc`, `backbone_only`, `suggested_models` (registry
    names whose architecture matches) and `num_variables` (not counting ignored ones).

    Example:
        >>> inspect_tf_checkpoint("deeplabv3_cityscapes_train/model.ckpt")["suggested_models"]
        ['deeplabv3plus_xception65']
    """
    prefix, reader = _open_checkpoint(ckpt_prefix)
    shapes = {n: tuple(int(d) for d in s) for n, s in reader.get_variable_to_shape_map().items()}
    return {"prefix": prefix, **_describe(shapes)}


def _hints(match, shapes, model_names):
    """Likely causes of a mismatch, in plain words."""
    hints = []
    info = _describe(shapes)
    nets, model_net = info["networks"], match.network
    if info["suggested_models"] and not match.backbone_only:
        hints.append(
            f"this checkpoint fits --model {' / '.join(info['suggested_models'])} "
            f"--num-classes {info['num_classes']}."
        )
    if nets and model_net not in nets:
        hints.append(
            f"the checkpoint holds network {'/'.join(nets)} but the model's backbone is "
            f"{model_net}: use a model with backbone "
            f"{' or '.join(b for net in nets for b in _SCOPE_BACKBONES[net])}."
        )
    elif model_net == "MobilenetV2" and "MobilenetV2/Conv/weights" in shapes:
        ckpt_dm05 = shapes["MobilenetV2/Conv/weights"][-1] == 16
        model_dm05 = model_names["MobilenetV2/Conv/weights"][0].filters == 16
        if ckpt_dm05 != model_dm05:
            want = "mobilenetv2_dm05" if ckpt_dm05 else "mobilenetv2"
            hints.append(f"the checkpoint's MobileNetV2 depth multiplier differs: use {want}.")
    logits = "logits/semantic/weights"
    if logits in shapes and logits in model_names:
        ckpt_classes = shapes[logits][-1]
        model_classes = tuple(model_names[logits][0].kernel.shape)[-1]
        if ckpt_classes != model_classes:
            hints.append(
                f"the checkpoint has {ckpt_classes} classes, the model {model_classes}: pass "
                f"--num-classes {ckpt_classes} (num_classes={ckpt_classes})."
            )
    if match.backbone_only:
        return hints
    if info["backbone_only"]:
        hints.append(
            "the checkpoint has no head variables (an ImageNet backbone checkpoint): load it "
            "with backbone_only=True to initialise the backbone only."
        )
        return hints
    model_head = _head_summary(model_names)
    if info["dpc"]:
        hints.append(
            "the checkpoint has a Dense Prediction Cell head (meta_architecture/*), which "
            "keras_deeplab does not implement; backbone_only=True loads its backbone."
        )
    if info["decoder"] != model_head["decoder"]:
        if info["decoder"]:
            hints.append("the checkpoint has a decoder: use a DeepLabV3+ model (deeplabv3plus_*).")
        else:
            hints.append("the checkpoint has no decoder: use a DeepLabV3 model (deeplabv3_*).")
    if info["aspp"] != model_head["aspp"] and info["aspp"] is not None:
        fix = {
            "separable": "separable atrous branches (aspp_separable=True, 3 atrous_rates)",
            "regular": "regular 3x3 atrous branches (aspp_separable=False)",
            "none": "no atrous branches (atrous_rates=(), the MobileNetV2 head)",
        }[info["aspp"]]
        hints.append(f"the checkpoint's ASPP has {fix}.")
    if info["image_pooling"] != model_head["image_pooling"]:
        hints.append(f"set image_pooling={info['image_pooling']}.")
    return hints


def match_tf_checkpoint(ckpt_prefix, model, backbone_only=False):
    """Matches checkpoint variables to `model` weights without assigning anything.

    Returns a `CheckpointMatch`; `load_tf_checkpoint` raises its `error_message()`
    unless `.ok`.
    """
    prefix, reader = _open_checkpoint(ckpt_prefix)
    shapes = {n: tuple(int(d) for d in s) for n, s in reader.get_variable_to_shape_map().items()}
    dtypes = reader.get_variable_to_dtype_map()
    if any(".ATTRIBUTES" in n for n in shapes):
        raise ValueError(
            f"{prefix} is a TF2 object-based checkpoint (tf.train.Checkpoint), not an official "
            "DeepLab TF1 (TF-slim) checkpoint; load Keras weights with model.load_weights."
        )
    net = network_scope(model)
    model_names = official_variable_names(model, backbone_only=backbone_only)
    match = CheckpointMatch(prefix, model.name, net, backbone_only, model_names)
    considered = set()
    for name in sorted(shapes):
        if is_ignored_variable(name):
            match.ignored.append(name)
        elif not backbone_only or name.startswith(f"{net}/"):
            considered.add(name)
    for name, (layer, attr) in sorted(model_names.items()):
        variable = getattr(layer, attr)
        model_shape = tuple(variable.shape)
        if name not in considered:
            match.missing.append((name, list(model_shape)))
            continue
        ckpt_dtype = dtypes[name].name
        if shapes[name] != model_shape or not dtypes[name].is_floating:
            match.mismatched.append(
                (
                    name,
                    f"{list(shapes[name])} {ckpt_dtype}",
                    f"{list(model_shape)} {variable.dtype}",
                )
            )
    match.unused = [(n, list(shapes[n])) for n in sorted(considered - set(model_names))]
    if not match.ok:
        match.hints = _hints(match, shapes, model_names)
    return match


def load_tf_checkpoint(ckpt_prefix, model, backbone_only=False):
    """Loads an official DeepLab TF1 checkpoint into `model`, all or nothing.

    Args:
        ckpt_prefix: checkpoint prefix (e.g. `.../model.ckpt` or `model.ckpt-30000`); a
            `.index` / `.data-*` file or a directory holding one checkpoint also works.
        model: a model from `create_model` / the builders (xception41/65/71,
            resnet50/101_beta or mobilenetv2(_dm05) backbone), or a bare backbone.
        backbone_only: load only the backbone (`<network>/...` variables), e.g. from an
            ImageNet checkpoint; head variables of the checkpoint are then not required.

    Returns:
        `model`, with every matched weight assigned.

    Raises:
        ValueError: listing every missing, unused and misshaped variable (nothing is
            assigned then), or when the checkpoint cannot be read.

    Example:
        >>> model = create_model("deeplabv3plus_xception65", num_classes=21)
        >>> load_tf_checkpoint("deeplabv3_pascal_train_aug/model.ckpt", model)
    """
    match = match_tf_checkpoint(ckpt_prefix, model, backbone_only=backbone_only)
    if not match.ok:
        raise ValueError(match.error_message())
    try:  # read every value before assigning any
        reader = tf.train.load_checkpoint(match.prefix)
        values = {name: reader.get_tensor(name) for name in match.assignments}
    except Exception as err:
        raise ValueError(
            f"Cannot read the values of checkpoint {match.prefix} ({type(err).__name__}); "
            "its .data-* file is missing or damaged. Nothing was loaded; extract the tarball "
            "again."
        ) from None
    for name, (layer, attr) in match.assignments.items():
        variable = getattr(layer, attr)
        variable.assign(np.asarray(values[name], dtype=variable.dtype))
    return model


def convert_tf_checkpoint(
    ckpt_prefix, model_name, num_classes, out_path, backbone_only=False, **model_overrides
):
    """Builds `create_model(model_name, num_classes=..., **overrides)`, loads the official
    checkpoint and saves Keras weights to `out_path` (must end in `.weights.h5`).

    Returns the model. Example:
        >>> convert_tf_checkpoint("deeplabv3_cityscapes_train/model.ckpt",
        ...                       "deeplabv3plus_xception65", 19, "x65_cityscapes.weights.h5")
    """
    from keras_deeplab.models import create_model

    out_path = os.fspath(out_path)
    if not out_path.endswith(".weights.h5"):
        raise ValueError(
            f"Output path {out_path!r} must end in '.weights.h5' (Keras weights file), "
            f"e.g. {model_name}.weights.h5."
        )
    model = create_model(model_name, num_classes=num_classes, **model_overrides)
    load_tf_checkpoint(ckpt_prefix, model, backbone_only=backbone_only)
    parent = os.path.dirname(out_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    model.save_weights(out_path)
    return model
