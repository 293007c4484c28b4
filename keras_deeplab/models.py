"""Public model builders (DeepLab v1, v2, v3, v3+) and the named-model registry.

Every builder returns a Keras functional model that takes RGB images and
returns per-pixel class logits at the input resolution
(`model(x).shape[1:3] == x.shape[1:3]`), resized with align-corners bilinear
interpolation as the official `predict_labels` does.

Example:

```python
import keras_deeplab

model = keras_deeplab.DeepLabV3Plus(backbone="xception", num_classes=21)
model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8")
print(keras_deeplab.list_models())
```
"""

import keras

from keras_deeplab.backbones import get_backbone, preprocessing_mode, resolve_backbone_name
from keras_deeplab.backbones.common import check_input_shape, check_output_stride
from keras_deeplab.heads.aspp import aspp
from keras_deeplab.heads.aspp_v2 import ASPP_L, ASPP_S, aspp_v2
from keras_deeplab.heads.cascade import cascade
from keras_deeplab.heads.common import logits_conv
from keras_deeplab.heads.decoder import decoder
from keras_deeplab.heads.largefov import largefov
from keras_deeplab.layers import Preprocessing, ResizeBilinear
from keras_deeplab.msc import MultiScaleInputs

ACTIVATIONS = (None, "softmax", "sigmoid")
DEFAULT_ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer (e.g. 21 for VOC); got {num_classes!r}."
        )


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}.")


def _v3_rates(backbone, output_stride, atrous_rates):
    """Official defaults: [6, 12, 18] at OS16 (doubled at OS8), none for MobileNetV2."""
    if atrous_rates is None:
        if backbone.startswith("mobilenetv2"):
            return ()
        return DEFAULT_ATROUS_RATES[output_stride]
    rates = tuple(int(r) for r in atrous_rates)
    if len(rates) not in (0, 3) or any(r < 1 for r in rates):
        raise ValueError(
            f"atrous_rates for the DeepLab v3 ASPP must be 3 positive rates, e.g. (6, 12, 18) at "
            f"output_stride 16 or (12, 24, 36) at 8, or () for image pooling + 1x1 only; got {rates}."
        )
    return rates


def _default_multi_grid(backbone, multi_grid):
    # The official resnet_v1_*_beta checkpoints are trained with multi_grid (1, 2, 4).
    if multi_grid is None and backbone.endswith("_beta"):
        return (1, 2, 4)
    return multi_grid


def _inputs(input_shape, backbone, include_preprocessing):
    input_shape = check_input_shape(input_shape)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if include_preprocessing:
        x = Preprocessing(preprocessing_mode(backbone), name="preprocessing")(x)
    return inputs, x


def _load_weights(model, weights):
    if weights is not None:
        from keras_deeplab.weights.loading import load_weights

        load_weights(model, weights)
    return model


def _finish(inputs, logits, activation, name, weights):
    """Resizes logits to the input size, applies the activation, loads weights."""
    outputs = ResizeBilinear(name="upsampled_logits")([logits, inputs])
    if activation is not None:
        outputs = keras.layers.Activation(activation, dtype="float32", name="probabilities")(
            outputs
        )
    return _load_weights(keras.Model(inputs, outputs, name=name), weights)


def _backbone(backbone, input_shape, output_stride, multi_grid, backbone_weights=None):
    features_shape = (input_shape[0], input_shape[1], 3)
    model = get_backbone(
        backbone,
        input_shape=features_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        name=f"{backbone}_backbone",
    )
    if backbone_weights is not None:
        from keras_deeplab.weights.imagenet import load_backbone_weights

        load_backbone_weights(model, backbone, backbone_weights)
    return model


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

    Args:
        backbone: `"vgg16"` (the only trunk of DeepLab v1).
        num_classes: number of classes (21 for PASCAL VOC).
        input_shape: `(H, W, 3)`; H and W may be None.
        output_stride: 8 (the paper's setting); 16/32 are allowed for experiments.
        dropout: dropout rate after fc6 and fc7.
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: the model takes RGB in [0, 255] (Caffe BGR mean
            subtraction inside); False: it takes preprocessed input.
        weights: None, a `.weights.h5` path or a named preset (see
            `keras_deeplab.weights.resolve_weights`).
        backbone_weights: None, `"imagenet"` (keras.applications download, for
            resnet50/101, mobilenetv2 and vgg16) or a local `.h5`/`.weights.h5` file.

    Example:
        `model = keras_deeplab.DeepLabV1(num_classes=21)`
    """
    backbone = resolve_backbone_name(backbone)
    if backbone != "vgg16":
        raise ValueError(
            f"DeepLabV1 (LargeFOV) is defined on vgg16 only; got backbone {backbone!r}."
        )
    _check_num_classes(num_classes)
    _check_activation(activation)
    check_output_stride(output_stride)
    inputs, x = _inputs(input_shape, backbone, include_preprocessing)
    features = _backbone(backbone, input_shape, output_stride, None, backbone_weights)(x)
    logits = largefov(features["final"], num_classes, dropout=dropout)
    return _finish(inputs, logits, activation, name, weights)


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

    Args:
        backbone: `"resnet101"` (the paper's), `"resnet50"`, `"vgg16"` (fc6-fc7-fc8
            branches) or any other registered backbone (one 3x3 conv per branch).
        num_classes: number of classes.
        input_shape: `(H, W, 3)`; H and W may be None.
        output_stride: 8 in the paper.
        aspp: `"L"` (rates 6, 12, 18, 24) or `"S"` (2, 4, 8, 12); ignored when
            `atrous_rates` is given.
        atrous_rates: four rates, overriding `aspp`.
        multi_grid: unit rates of the last ResNet block.
        multi_scale: wrap the model in `MultiScaleInputs` (MSC): `scales` share
            weights, logits are max-fused; per-scale logits are returned in training.
        scales: MSC input scales.
        dropout: dropout inside the VGG branches.
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: take RGB in [0, 255] and normalise inside.
        weights: None, a `.weights.h5` path or a named preset (see
            `keras_deeplab.weights.resolve_weights`).
        backbone_weights: None, `"imagenet"` (keras.applications download, for
            resnet50/101, mobilenetv2 and vgg16) or a local `.h5`/`.weights.h5` file.

    Example:
        `model = keras_deeplab.DeepLabV2(backbone="resnet101", aspp="L", multi_scale=True)`
    """
    backbone = resolve_backbone_name(backbone)
    _check_num_classes(num_classes)
    _check_activation(activation)
    check_output_stride(output_stride)
    if atrous_rates is None:
        presets = {"L": ASPP_L, "S": ASPP_S}
        if str(aspp).upper() not in presets:
            raise ValueError(
                f"aspp must be 'L' (rates {ASPP_L}) or 'S' (rates {ASPP_S}); got {aspp!r}."
            )
        atrous_rates = presets[str(aspp).upper()]
    atrous_rates = tuple(int(r) for r in atrous_rates)
    if len(atrous_rates) != 4 or any(r < 1 for r in atrous_rates):
        raise ValueError(
            f"atrous_rates for the DeepLab v2 ASPP must be 4 positive rates, e.g. {ASPP_L} (ASPP-L) "
            f"or {ASPP_S} (ASPP-S); got {atrous_rates}."
        )
    inputs, x = _inputs(input_shape, backbone, include_preprocessing)
    features = _backbone(backbone, input_shape, output_stride, multi_grid, backbone_weights)(x)
    logits = aspp_v2(
        features["final"],
        num_classes,
        atrous_rates=atrous_rates,
        vgg_branches=backbone == "vgg16",
        dropout=dropout,
    )
    if not multi_scale:
        return _finish(inputs, logits, activation, name, weights)
    single = _finish(inputs, logits, None, f"{name}_single_scale", None)
    model = MultiScaleInputs(single, scales=scales, activation=activation, name=name)
    return _load_weights(model, weights)


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
    activation=None,
    include_preprocessing=True,
    weights=None,
    backbone_weights=None,
    name="deeplabv3",
):
    """DeepLab v3: atrous backbone + ASPP with image pooling (or the cascade head).

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
    arXiv:1706.05587. Logits at `output_stride`, upsampled to the input.

    Args:
        backbone: any registered backbone (`list_backbones()`); `"xception"` is xception65.
        num_classes: number of classes.
        input_shape: `(H, W, 3)`; H and W may be None.
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
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: take RGB in [0, 255] and normalise inside.
        weights: None, a `.weights.h5` path or a named preset (see
            `keras_deeplab.weights.resolve_weights`).
        backbone_weights: None, `"imagenet"` (keras.applications download, for
            resnet50/101, mobilenetv2 and vgg16) or a local `.h5`/`.weights.h5` file.

    Example:
        `model = keras_deeplab.DeepLabV3(backbone="mobilenetv2_dm05", output_stride=8)`
    """
    backbone = resolve_backbone_name(backbone)
    _check_num_classes(num_classes)
    _check_activation(activation)
    check_output_stride(output_stride)
    if head not in ("aspp", "cascade"):
        raise ValueError(f"head must be 'aspp' or 'cascade'; got {head!r}.")
    multi_grid = _default_multi_grid(backbone, multi_grid)
    inputs, x = _inputs(input_shape, backbone, include_preprocessing)
    features = _backbone(backbone, input_shape, output_stride, multi_grid, backbone_weights)(x)
    if head == "cascade":
        if not backbone.startswith("resnet"):
            raise ValueError(
                f"The cascade head copies ResNet block4; backbone {backbone!r} is not a ResNet."
            )
        y = cascade(
            features["final"],
            flavour="beta" if backbone.endswith("_beta") else "caffe",
            output_stride=output_stride,
            num_blocks=cascade_blocks,
            multi_grid=multi_grid,
        )
    else:
        y = aspp(
            features["final"],
            atrous_rates=_v3_rates(backbone, output_stride, atrous_rates),
            separable=aspp_separable,
            image_pooling=image_pooling,
            dropout=dropout,
        )
    logits = logits_conv(y, num_classes)
    return _finish(inputs, logits, activation, name, weights)


def DeepLabV3Plus(
    backbone="xception65",
    num_classes=21,
    input_shape=(None, None, 3),
    output_stride=16,
    atrous_rates=None,
    multi_grid=None,
    aspp_separable=True,
    image_pooling=True,
    decoder_separable=True,
    decoder_filters=256,
    low_level_filters=48,
    dropout=0.1,
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

    Args:
        backbone: any registered backbone; `"xception"` is xception65.
        num_classes: number of classes.
        input_shape: `(H, W, 3)`; H and W may be None.
        output_stride: encoder output stride, 8, 16 or 32 (the decoder is at 4).
        atrous_rates: three ASPP rates (defaults as `DeepLabV3`).
        multi_grid: unit rates of the last block (default (1, 2, 4) for `_beta` ResNets).
        aspp_separable: separable 3x3 ASPP branches.
        image_pooling: add the image-level feature branch.
        decoder_separable: separable decoder refinement convs.
        decoder_filters: channels of the decoder refinement convs.
        low_level_filters: channels of the low-level projection.
        dropout: dropout after the ASPP projection.
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: take RGB in [0, 255] and normalise inside.
        weights: None, a `.weights.h5` path or a named preset (see
            `keras_deeplab.weights.resolve_weights`).
        backbone_weights: None, `"imagenet"` (keras.applications download, for
            resnet50/101, mobilenetv2 and vgg16) or a local `.h5`/`.weights.h5` file.

    Example:
        `model = keras_deeplab.DeepLabV3Plus(backbone="xception", num_classes=21)`
    """
    backbone = resolve_backbone_name(backbone)
    _check_num_classes(num_classes)
    _check_activation(activation)
    check_output_stride(output_stride)
    multi_grid = _default_multi_grid(backbone, multi_grid)
    inputs, x = _inputs(input_shape, backbone, include_preprocessing)
    features = _backbone(backbone, input_shape, output_stride, multi_grid, backbone_weights)(x)
    y = aspp(
        features["final"],
        atrous_rates=_v3_rates(backbone, output_stride, atrous_rates),
        separable=aspp_separable,
        image_pooling=image_pooling,
        dropout=dropout,
    )
    y = decoder(
        y,
        features["stride_4"],
        separable=decoder_separable,
        filters=decoder_filters,
        low_level_filters=low_level_filters,
    )
    logits = logits_conv(y, num_classes)
    return _finish(inputs, logits, activation, name, weights)


# name -> (builder, configuration). Names spell family, backbone and the
# non-default settings; `create_model(name, **overrides)` builds them.
MODEL_CONFIGS = {
    "deeplabv1_vgg16_largefov": (DeepLabV1, {"backbone": "vgg16"}),
    "deeplabv2_vgg16_aspp_s": (DeepLabV2, {"backbone": "vgg16", "aspp": "S"}),
    "deeplabv2_vgg16_aspp_l": (DeepLabV2, {"backbone": "vgg16", "aspp": "L"}),
    "deeplabv2_resnet101_aspp_s": (DeepLabV2, {"backbone": "resnet101", "aspp": "S"}),
    "deeplabv2_resnet101_aspp_l": (DeepLabV2, {"backbone": "resnet101", "aspp": "L"}),
    "deeplabv2_resnet101_aspp_l_msc": (
        DeepLabV2,
        {"backbone": "resnet101", "aspp": "L", "multi_scale": True},
    ),
    "deeplabv2_resnet50_aspp_l": (DeepLabV2, {"backbone": "resnet50", "aspp": "L"}),
    "deeplabv3_resnet50_beta": (DeepLabV3, {"backbone": "resnet50_beta"}),
    "deeplabv3_resnet101_beta": (DeepLabV3, {"backbone": "resnet101_beta"}),
    "deeplabv3_resnet101_beta_cascade": (
        DeepLabV3,
        {"backbone": "resnet101_beta", "head": "cascade"},
    ),
    "deeplabv3_xception65": (DeepLabV3, {"backbone": "xception65"}),
    "deeplabv3_mobilenetv2": (DeepLabV3, {"backbone": "mobilenetv2"}),
    "deeplabv3_mobilenetv2_os8": (DeepLabV3, {"backbone": "mobilenetv2", "output_stride": 8}),
    "deeplabv3_mobilenetv2_dm05": (DeepLabV3, {"backbone": "mobilenetv2_dm05"}),
    "deeplabv3_mobilenetv2_dm05_os8": (
        DeepLabV3,
        {"backbone": "mobilenetv2_dm05", "output_stride": 8},
    ),
    "deeplabv3plus_xception41": (DeepLabV3Plus, {"backbone": "xception41"}),
    "deeplabv3plus_xception65": (DeepLabV3Plus, {"backbone": "xception65"}),
    "deeplabv3plus_xception71": (DeepLabV3Plus, {"backbone": "xception71"}),
    "deeplabv3plus_resnet50_beta": (DeepLabV3Plus, {"backbone": "resnet50_beta"}),
    "deeplabv3plus_resnet101_beta": (DeepLabV3Plus, {"backbone": "resnet101_beta"}),
    "deeplabv3plus_resnet50": (DeepLabV3Plus, {"backbone": "resnet50"}),
    "deeplabv3plus_resnet101": (DeepLabV3Plus, {"backbone": "resnet101"}),
    "deeplabv3plus_mobilenetv2": (DeepLabV3Plus, {"backbone": "mobilenetv2"}),
}


def list_models():
    """Names accepted by `create_model`."""
    return sorted(MODEL_CONFIGS)


def model_config(name):
    """`(builder, configuration)` of a registered model; clear error for unknown names."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model {name!r}. Registered models: {', '.join(list_models())}.")
    builder, config = MODEL_CONFIGS[name]
    return builder, dict(config)


def create_model(name, **overrides):
    """Builds a registered model; keyword arguments override its configuration.

    Example:
        `keras_deeplab.create_model("deeplabv3plus_xception65", num_classes=19)`
    """
    builder, config = model_config(name)
    config.update(overrides)
    config.setdefault("name", name)
    return builder(**config)
