"""Public model builders (DeepLab v1, v2, v3, v3+) and the named-model registry.

Every builder returns a `SegmentationModel` (a functional `keras.Model` that knows its
architecture, backbone, output stride, class count, activation and preprocessing) that
takes RGB images and returns per-pixel class logits at the input resolution
(`model(x).shape[1:3] == x.shape[1:3]`), resized with align-corners bilinear
interpolation as the official `predict_labels` does. The architectures, heads and named
models live in `keras_deeplab.registry` (filled by `keras_deeplab.architectures`).

Example:

```python
import keras_deeplab

model = keras_deeplab.DeepLabV3Plus(backbone="xception", num_classes=21)
model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8")
print(keras_deeplab.list_models(architecture="deeplabv3plus"))
```
"""

import difflib
import functools

from keras_deeplab.heads.aspp import DEFAULT_ATROUS_RATES
from keras_deeplab.msc import MultiScaleInputs
from keras_deeplab.registry import ARCHITECTURES, MODELS, check_arguments, get_architecture
from keras_deeplab.segmentation_model import ACTIVATIONS, SegmentationModel

MSC_SCALES = (1.0, 0.75, 0.5)


def _load_weights(model, weights):
    if weights is not None:
        from keras_deeplab.weights.loading import load_weights

        load_weights(model, weights)
    return model


def _load_backbone_weights(model, backbone_weights):
    if backbone_weights is not None:
        from keras_deeplab.weights.imagenet import load_backbone_weights

        load_backbone_weights(model.get_backbone(), model.backbone_name, backbone_weights)


def build_model(architecture, **kwargs):
    """Builds a model of a registered architecture; loads `weights`/`backbone_weights`.

    Takes the architecture's arguments (`SegmentationModel`; an unknown one is one error
    listing the accepted ones), these, and for architectures with multi-scale inputs
    `multi_scale` / `scales` (see `DeepLabV2`):

    Args:
        num_classes: number of classes (21 for PASCAL VOC).
        input_shape: `(H, W, 3)`; H and W may be None.
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: the model takes RGB in [0, 255] and normalises it inside
            (the backbone's convention: [-1, 1], or Caffe BGR mean subtraction); False: it
            takes normalised input.
        weights: None, a `.weights.h5` path or a named preset (see
            `keras_deeplab.weights.resolve_weights`).
        backbone_weights: None, `"imagenet"` (keras.applications download, for
            resnet50/101, mobilenetv2 and vgg16) or a local `.h5`/`.weights.h5` file.
        name: model name (default: the architecture's).

    Example:
        `model = build_model("deeplabv3", backbone="mobilenetv2_dm05", num_classes=3)`
    """
    arch = get_architecture(architecture)
    extras = {"weights": None, "backbone_weights": None, "name": architecture}
    if arch.multi_scale:
        extras.update(multi_scale=False, scales=MSC_SCALES)
    check_arguments(architecture, kwargs, accepted_extra=extras)
    build = {key: kwargs.pop(key, default) for key, default in extras.items()}
    if build["backbone_weights"] is not None and arch.graph is not None:
        hint = {
            "fcn": " (FCN: keras_deeplab.architectures.fcn.fcn_vgg16_from_keras_applications "
            "copies keras.applications VGG16 weights into it)"
        }.get(architecture, "")
        raise ValueError(
            f"backbone_weights: {architecture} is a whole network without a separate backbone, "
            f"so there is no backbone to load {build['backbone_weights']!r} into{hint}; "
            "use weights= for a whole model's weights."
        )
    if build.get("multi_scale"):
        activation = kwargs.pop("activation", None)
        single = SegmentationModel(
            architecture, name=f"{build['name']}_single_scale", activation=None, **kwargs
        )
        _load_backbone_weights(single, build["backbone_weights"])
        model = MultiScaleInputs(
            single, scales=build["scales"], activation=activation, name=build["name"]
        )
    else:
        model = SegmentationModel(architecture, name=build["name"], **kwargs)
        _load_backbone_weights(model, build["backbone_weights"])
    return _load_weights(model, build["weights"])


def DeepLabV1(
    backbone="vgg16",
    num_classes=21,
    input_shape=(None, None, 3),
    output_stride=8,
    dropout=0.5,
    activation=None,
    include_preprocessing=True,
    weights=None,
    backbone_weights=None,
    name="deeplabv1",
):
    """DeepLab v1 LargeFOV: VGG-16 trunk at output stride 8 + the LargeFOV head.

    Chen et al., ICLR 2015, arXiv:1412.7062 (the CRF is post-processing, not part
    of the model).

    Args (and those of `build_model`: `num_classes`, `input_shape`, `activation`,
    `include_preprocessing`, `weights`, `backbone_weights`, `name`):
        backbone: `"vgg16"` (the only trunk of DeepLab v1).
        output_stride: 8 (the paper's setting); 16/32 are allowed for experiments.
        dropout: dropout rate after fc6 and fc7.

    Example:
        `model = keras_deeplab.DeepLabV1(num_classes=21)`
    """
    return build_model("deeplabv1", **locals())


def DeepLabV2(
    backbone="resnet101",
    num_classes=21,
    input_shape=(None, None, 3),
    output_stride=8,
    aspp="L",
    atrous_rates=None,
    multi_grid=None,
    multi_scale=False,
    scales=(1.0, 0.75, 0.5),
    dropout=0.5,
    activation=None,
    include_preprocessing=True,
    weights=None,
    backbone_weights=None,
    name="deeplabv2",
):
    """DeepLab v2: atrous backbone + ASPP of summed atrous classifiers (+ optional MSC).

    Chen et al., TPAMI 2017, arXiv:1606.00915.

    Args (and those of `build_model`: `num_classes`, `input_shape`, `activation`,
    `include_preprocessing`, `weights`, `backbone_weights`, `name`):
        backbone: `"resnet101"` (the paper's), `"resnet50"`, `"vgg16"` (fc6-fc7-fc8
            branches) or any other registered backbone (one 3x3 conv per branch).
        output_stride: 8 in the paper.
        aspp: `"L"` (rates 6, 12, 18, 24) or `"S"` (2, 4, 8, 12); ignored when
            `atrous_rates` is given.
        atrous_rates: four rates, overriding `aspp`.
        multi_grid: unit rates of the last ResNet block.
        multi_scale: wrap the model in `MultiScaleInputs` (MSC): `scales` share
            weights, logits are max-fused; per-scale logits are returned in training.
        scales: MSC input scales.
        dropout: dropout inside the VGG branches.

    Example:
        `model = keras_deeplab.DeepLabV2(backbone="resnet101", aspp="L", multi_scale=True)`
    """
    return build_model("deeplabv2", **locals())


def DeepLabV3(
    backbone="resnet101_beta",
    num_classes=21,
    input_shape=(None, None, 3),
    output_stride=16,
    atrous_rates=None,
    multi_grid=None,
    head="aspp",
    aspp_separable=True,
    image_pooling=True,
    cascade_blocks=3,
    dropout=0.1,
    aux_head=False,
    aux_taps=("final",),
    aux_loss_weight=0.4,
    activation=None,
    include_preprocessing=True,
    weights=None,
    backbone_weights=None,
    name="deeplabv3",
):
    """DeepLab v3: atrous backbone + ASPP with image pooling (or the cascade head).

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
    arXiv:1706.05587. Logits at `output_stride`, upsampled to the input.

    Args (and those of `build_model`: `num_classes`, `input_shape`, `activation`,
    `include_preprocessing`, `weights`, `backbone_weights`, `name`):
        backbone: any registered backbone (`list_backbones()`); `"xception"` is xception65.
        output_stride: 8, 16 or 32.
        atrous_rates: three ASPP rates; default (6, 12, 18) at OS16, (12, 24, 36) at
            OS8, (3, 6, 9) at OS32, and `()` (image pooling + 1x1 only, the official
            MobileNetV2 head) for MobileNetV2.
        multi_grid: unit rates of the last block (default (1, 2, 4) for `_beta` ResNets).
        head: `"aspp"` or `"cascade"` (extra atrous ResNet blocks, the paper's
            cascaded variant; ResNet backbones only).
        aspp_separable: separable 3x3 ASPP branches (the official code's default);
            False gives the v3 paper's regular 3x3 convs.
        image_pooling: add the image-level feature branch.
        cascade_blocks: extra blocks of the cascade head (block5, block6, ...).
        dropout: dropout after the ASPP projection.
        aux_head: training-only 1x1 classifiers on the backbone taps `aux_taps` (deep
            supervision, not in the paper; inference and exports return the plain network).
        aux_taps: the taps of those classifiers (default the final one; also `"stride_4"`,
            `"stride_8"`, `"stride_16"` where the backbone has them).
        aux_loss_weight: each classifier's weight in the loss.

    Example:
        `model = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", output_stride=8)`
    """
    return build_model("deeplabv3", **locals())


def DeepLabV3Plus(
    backbone="xception65",
    num_classes=21,
    input_shape=(None, None, 3),
    output_stride=16,
    atrous_rates=None,
    multi_grid=None,
    aspp_separable=True,
    image_pooling=True,
    aspp_filters=256,
    decoder_separable=True,
    decoder_filters=256,
    low_level_filters=48,
    dropout=0.1,
    aux_head=False,
    aux_taps=("final",),
    aux_loss_weight=0.4,
    activation=None,
    include_preprocessing=True,
    weights=None,
    backbone_weights=None,
    name="deeplabv3plus",
):
    """DeepLab v3+: v3 encoder (ASPP) + decoder on the stride-4 low-level tap.

    Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
    Image Segmentation", ECCV 2018, arXiv:1802.02611. Defaults are the official
    xception65 configuration: OS16, separable ASPP and decoder convs, image pooling.

    Args (and those of `build_model`: `num_classes`, `input_shape`, `activation`,
    `include_preprocessing`, `weights`, `backbone_weights`, `name`):
        backbone: any registered backbone; `"xception"` is xception65.
        output_stride: encoder output stride, 8, 16 or 32 (the decoder is at 4).
        atrous_rates: three ASPP rates (defaults as `DeepLabV3`).
        multi_grid: unit rates of the last block (default (1, 2, 4) for `_beta` ResNets).
        aspp_separable: separable 3x3 ASPP branches.
        image_pooling: add the image-level feature branch.
        aspp_filters: channels of every ASPP branch and of their projection (official 256).
        decoder_separable: separable decoder refinement convs.
        decoder_filters: channels of the decoder refinement convs.
        low_level_filters: channels of the low-level projection.
        dropout: dropout after the ASPP projection.
        aux_head: training-only 1x1 classifiers on the backbone taps `aux_taps` (deep
            supervision, not in the paper; inference and exports return the plain network).
        aux_taps: the taps of those classifiers (default the final one; also `"stride_4"`,
            `"stride_8"`, `"stride_16"` where the backbone has them).
        aux_loss_weight: each classifier's weight in the loss.

    Example:
        `model = keras_deeplab.DeepLabV3Plus(backbone="xception", num_classes=21)`
    """
    return build_model("deeplabv3plus", **locals())


# architecture -> its public builder
BUILDERS = {
    "deeplabv1": DeepLabV1,
    "deeplabv2": DeepLabV2,
    "deeplabv3": DeepLabV3,
    "deeplabv3plus": DeepLabV3Plus,
}


def _builder(architecture):
    return BUILDERS.get(architecture) or functools.partial(build_model, architecture)


def list_models(architecture=None):
    """Names accepted by `create_model`, sorted; only those of `architecture` if given.

    Example:
        `keras_deeplab.list_models(architecture="deeplabv3plus")`
    """
    if architecture is not None:
        get_architecture(architecture)  # the error lists the registered ones
        return sorted(name for name, (arch, _) in MODELS.items() if arch == architecture)
    return sorted(MODELS)


def list_architectures():
    """Registered architectures (`SegmentationModel(architecture=...)`)."""
    return sorted(ARCHITECTURES)


def _check_name(name):
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown model {name!r}{hint}. Registered models: {', '.join(list_models())}."
        )


def model_architecture(name):
    """`(architecture, configuration)` of a registered model; clear error for unknown names."""
    _check_name(name)
    architecture, config = MODELS[name]
    return architecture, dict(config)


def model_config(name):
    """`(builder, configuration)` of a registered model; clear error for unknown names."""
    architecture, config = model_architecture(name)
    return _builder(architecture), config


def check_model_arguments(name, **overrides):
    """Raises the `create_model(name, **overrides)` error for an unknown name or argument,
    without building anything (e.g. to check a training config before reading data)."""
    architecture, config = model_architecture(name)
    extras = ["weights", "backbone_weights", "name"]
    if get_architecture(architecture).multi_scale:
        extras += ["multi_scale", "scales"]
    check_arguments(architecture, {**config, **overrides}, extras, what=f"create_model({name!r})")


def create_model(name, **overrides):
    """Builds a registered model; keyword arguments override its configuration.

    Example:
        `keras_deeplab.create_model("deeplabv3plus_xception65", num_classes=19)`
    """
    architecture, config = model_architecture(name)
    check_model_arguments(name, **overrides)
    config.update(overrides)
    config.setdefault("name", name)
    return build_model(architecture, **config)


__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ATROUS_RATES",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "SegmentationModel",
    "build_model",
    "create_model",
    "list_architectures",
    "list_models",
    "model_architecture",
    "model_config",
]
