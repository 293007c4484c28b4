"""`SegmentationModel`: the one model class of the package, built from its arguments.

Every model the package builds (the `DeepLabV1/V2/V3/V3Plus` builders, `create_model`,
`MultiScaleInputs`, `weights.load_tflite`, `optimize.optimize_for_inference`) is a
`SegmentationModel`: a functional `keras.Model` whose `__init__` builds the graph from its
arguments (an architecture from `keras_deeplab.registry`, a backbone, the class count, ...)
and whose `get_config()` returns exactly those arguments, as keras-hub's models do. So it
knows what it is (`architecture`, `backbone_name`, `output_stride`, `num_classes`,
`activation`, `preprocessing`, `feature_info`), and a `.keras` file rebuilds the same graph
(layer names, hence weights files and checkpoints, are those of the builders).

Saving and loading:

* `keras.models.load_model("m.keras")` needs no `custom_objects` once `keras_deeplab` is
  imported. Without the import Keras cannot find the class; its error reads
  "Could not locate class 'SegmentationModel'" and the config it prints names the module
  (`keras_deeplab.segmentation_model`): import keras_deeplab and load again.
* `keras.models.clone_model(model)` returns a `SegmentationModel` with the same arguments
  and properties (new layers; its last layer, `ModelSpec`, carries them), without the
  training-only auxiliary heads; `model.clone()` rebuilds from the arguments (new weights,
  or the same values with `copy_weights=True`) and keeps them.

Example:

```python
import keras
import keras_deeplab

model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=3)
model.architecture, model.backbone_name, model.output_stride  # ('deeplabv3', 'mobilenetv2_dm05', 8)
model.save("m.keras")
same = keras.models.load_model("m.keras")  # a SegmentationModel, same config and outputs
```
"""

import contextlib
import json

import keras

import keras_deeplab.architectures  # noqa: F401 - registers the architectures and heads
from keras_deeplab import optimize
from keras_deeplab.backbones import backbone_graph, preprocessing_mode, resolve_backbone_name
from keras_deeplab.backbones.common import check_input_shape, check_output_stride, frozen_config
from keras_deeplab.layers import (
    CHANNEL_AGNOSTIC_MODES,
    PACKAGE,
    ModelSpec,
    Preprocessing,
    ResizeBilinear,
)
from keras_deeplab.registry import check_arguments, get_architecture, get_head

ACTIVATIONS = (None, "softmax", "sigmoid")
INFERENCE_OPTIONS = {"fold": True, "space_to_batch": True, "dtype_policy": None}
# What every SegmentationModel reports (see the properties).
SPEC_KEYS = (
    "architecture",
    "backbone",
    "output_stride",
    "num_classes",
    "activation",
    "preprocessing",
    "feature_info",
    "auxiliary_loss_weights",
)


SPEC_LAYER = "model_spec"


def _is_graph(value):
    """True for the `inputs` of the functional form `SegmentationModel(inputs, outputs)`."""
    tensors = value.values() if isinstance(value, dict) else value
    if isinstance(value, (list, tuple, dict)):
        return bool(tensors) and all(isinstance(t, keras.KerasTensor) for t in tensors)
    return isinstance(value, keras.KerasTensor)


def check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer (e.g. 21 for VOC); got {num_classes!r}."
        )


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}.")


def resolve_arguments(architecture, arguments):
    """`(Architecture, full arguments)`: defaults filled in, names canonical, values checked.

    Raises one `ValueError` per problem, naming the argument and what is allowed; nothing is
    built, so configs can be checked before any data is read.

    Example:
        >>> resolve_arguments("deeplabv3", {"backbone": "mobilenet_v2"})[1]["atrous_rates"]
        ()
    """
    arch = get_architecture(architecture)
    check_arguments(architecture, arguments)
    defaults = arch.arguments()
    args = {**defaults, **arguments}
    for key in ("backbone", "output_stride"):  # None: the architecture's default
        if args[key] is None:
            args[key] = defaults[key]
    if args["backbone"] is not None or arch.graph is None:
        args["backbone"] = resolve_backbone_name(args["backbone"])
        if arch.backbones is not None and args["backbone"] not in arch.backbones:
            raise ValueError(
                f"{arch.name} is defined on {', '.join(arch.backbones)} only; got backbone "
                f"{arguments.get('backbone')!r}."
            )
    check_num_classes(args["num_classes"])
    check_activation(args["activation"])
    check_output_stride(args["output_stride"])
    args["input_shape"] = check_input_shape(args["input_shape"], arch.input_channels)
    if "aux_head" in args and not isinstance(args["aux_head"], bool):  # every auxiliary switch
        raise ValueError(f"aux_head must be True or False; got {args['aux_head']!r}.")
    if arch.resolve is not None:
        args = arch.resolve(args)
    mode = _preprocessing(arch, args)
    if mode is not None and mode not in CHANNEL_AGNOSTIC_MODES and args["input_shape"][-1] != 3:
        raise ValueError(
            f"Preprocessing {mode!r} ({arch.name}) needs RGB input; input_shape "
            f"{args['input_shape']} has {args['input_shape'][-1]} channels. Pass 3-channel "
            "images, or include_preprocessing=False and normalise the input yourself."
        )
    return arch, args


def _inference_options(inference):
    if inference is None:
        return None
    unknown = set(inference) - set(INFERENCE_OPTIONS)
    if unknown:
        raise ValueError(
            f"inference: unknown option(s) {sorted(unknown)}; accepted: {list(INFERENCE_OPTIONS)}."
        )
    return {**INFERENCE_OPTIONS, **inference}


@contextlib.contextmanager
def _dtype_policy(name):
    """Builds layers under the Keras dtype policy `name` (None: the current global one)."""
    if name is None or name == keras.config.dtype_policy().name:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _to_input_size(inputs, logits, upsample, name):
    """`logits` resized to the input's size by the architecture's convention (None: kept)."""
    if upsample is None:
        return logits
    resize = ResizeBilinear(align_corners=upsample == "align_corners", name=name)
    return resize([logits, inputs])


def _finish(inputs, logits, activation, upsample="align_corners"):
    """Logits resized to the input size, then the activation (if any)."""
    outputs = _to_input_size(inputs, logits, upsample, "upsampled_logits")
    if activation is not None:
        outputs = keras.layers.Activation(activation, dtype="float32", name="probabilities")(
            outputs
        )
    return outputs


def auxiliary_heads(arch, args):
    """`{output key: (head name, loss weight)}` of the training-only heads `args` enable."""
    if arch.auxiliary is None:
        return {}
    return {
        "aux" if i == 0 else f"aux_{i}": (head, float(weight))
        for i, (head, weight) in enumerate(arch.auxiliary(args))
    }


def _preprocessing(arch, args):
    """The input normalisation inside the model: the backbone's, else the architecture's."""
    if not args["include_preprocessing"]:
        return None
    return preprocessing_mode(args["backbone"]) if args["backbone"] else arch.preprocessing


def _build_graph(arch, args):
    """`(inputs, outputs, auxiliary outputs, feature_info)` of an architecture with resolved
    arguments; the auxiliary outputs (`{key: logits}`, at the input size unless their head
    has `upsample_logits=False`) are training-only."""
    inputs = keras.Input(shape=args["input_shape"], name="image")
    x = inputs
    backbone = args["backbone"]
    if args["include_preprocessing"]:
        x = Preprocessing(_preprocessing(arch, args), name="preprocessing")(x)
    if arch.graph is not None:
        outputs = _finish(inputs, arch.graph(x, args), args["activation"], arch.upsample)
        return inputs, outputs, {}, None
    height, width, _ = args["input_shape"]
    backbone_model, feature_info = backbone_graph(
        backbone,
        input_shape=(height, width, 3),
        output_stride=args["output_stride"],
        multi_grid=args.get("multi_grid"),
        name=f"{backbone}_backbone",
    )
    features = backbone_model(x)
    y = features["final"]
    for head in arch.heads(args):
        y = _build_head(head, y, features, args)
    outputs = _finish(inputs, y, args["activation"], arch.upsample)
    auxiliary = {
        key: _to_input_size(
            inputs,
            _build_head(head, features["final"], features, args),
            (arch.upsample or "align_corners") if get_head(head).upsample_logits else None,
            f"upsampled_{key}",
        )
        for key, (head, _) in auxiliary_heads(arch, args).items()
    }
    return inputs, outputs, auxiliary, feature_info


def _build_head(name, x, features, args):
    """Applies head `name`; the head options an architecture does not expose keep their
    defaults (e.g. the ASPP's width in DeepLab v3)."""
    head = get_head(name)
    return head.build(x, features, {**head.options, **args})


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentationModel(keras.Model):
    """A segmentation model built from its arguments: images -> per-pixel class scores.

    Takes RGB images (`[batch, H, W, 3]`, values in [0, 255] with
    `include_preprocessing=True`) and returns logits (or probabilities with `activation`)
    at the input size.

    Args:
        architecture: a registered architecture (`keras_deeplab.registry.ARCHITECTURES`),
            e.g. `"deeplabv3plus"`.
        backbone: a registered backbone (`keras_deeplab.list_backbones()`); None: the
            architecture's default.
        num_classes: number of classes.
        input_shape: `(H, W, 3)`; H and W may be None.
        output_stride: backbone output stride (8, 16 or 32); None: the architecture's default.
        activation: None (logits), `"softmax"` or `"sigmoid"`.
        include_preprocessing: take RGB in [0, 255] and normalise inside.
        inference: None, or inference-only graph rewrites `{"fold": bool, "space_to_batch":
            bool, "dtype_policy": str | None}` (what `optimize_for_inference` records).
        name: model name (default: the architecture's name).
        trainable, dtype: as every Keras layer (dtype: the dtype policy name).
        **options: the architecture's own arguments (e.g. `atrous_rates`, `decoder_filters`);
            an unknown one is an error listing the accepted ones.

    Example:
        >>> model = SegmentationModel("deeplabv3", backbone="mobilenetv2_dm05", num_classes=3)
        >>> model.get_config()["atrous_rates"], model.output_stride
        ([], 16)
    """

    def __init__(
        self,
        architecture="deeplabv3plus",
        backbone=None,
        num_classes=21,
        input_shape=(None, None, 3),
        output_stride=None,
        activation=None,
        include_preprocessing=True,
        inference=None,
        name=None,
        trainable=True,
        dtype=None,
        *graph,
        **options,
    ):
        if graph:
            raise TypeError(
                f"SegmentationModel takes its arguments by keyword after dtype; got {len(graph)} "
                "more positional argument(s)."
            )
        if _is_graph(architecture):  # SegmentationModel(inputs, outputs, name=...)
            self._init_from_graph(architecture, backbone, name, trainable, dtype)
            return
        arch, args = resolve_arguments(
            architecture,
            {
                "backbone": backbone,
                "num_classes": num_classes,
                "input_shape": input_shape,
                "output_stride": output_stride,
                "activation": activation,
                "include_preprocessing": include_preprocessing,
                **options,
            },
        )
        inference = _inference_options(inference)
        dtype = dtype or keras.config.dtype_policy().name
        with _dtype_policy(dtype):
            inputs, outputs, auxiliary, feature_info = _build_graph(arch, args)
            if inference is not None:
                graph = optimize.transform_graph(
                    keras.Model(inputs, outputs), share_layers=False, **inference
                )
                inputs, outputs = graph.input, graph.output
        config = {"architecture": arch.name, **args}
        if inference is not None:
            config["inference"] = inference
        spec = {
            "architecture": arch.name,
            "backbone": args["backbone"],
            "output_stride": args["output_stride"],
            "num_classes": args["num_classes"],
            "activation": args["activation"],
            "preprocessing": _preprocessing(arch, args),
            "feature_info": feature_info,
            "auxiliary_loss_weights": {
                key: weight for key, (_, weight) in auxiliary_heads(arch, args).items()
            },
        }
        self._init_graph(inputs, outputs, config, spec, name or arch.name, trainable, dtype)
        if auxiliary and inference is None:
            # Tracked as an attribute: its layers (the heads') are saved with the model; the
            # shared ones once. Inference-rewritten graphs drop the training-only heads.
            self._training_graph = keras.Model(
                inputs, {"logits": outputs, **auxiliary}, name=f"{self.name}_training"
            )

    def _init_graph(self, inputs, outputs, config, spec, name, trainable, dtype):
        """The functional-model initialisation shared by every construction path."""
        # JSON text: the form a `.keras` file gives back, and not wrapped by layer tracking.
        config = frozen_config(config)
        spec = frozen_config({key: spec.get(key) for key in SPEC_KEYS})
        outputs = ModelSpec(config, spec, name=SPEC_LAYER)(outputs)
        super().__init__(
            inputs=inputs, outputs=outputs, name=name, trainable=trainable, dtype=dtype
        )
        self._config, self._spec = config, spec

    def _init_from_graph(self, inputs, outputs, name, trainable, dtype):
        """A copy of a SegmentationModel's graph (what `keras.models.clone_model` passes):
        arguments and properties from its `ModelSpec` layer. Training-only auxiliary heads
        are not in the graph, so the copy has none (`model.clone()` keeps them)."""
        super().__init__(inputs=inputs, outputs=outputs, name=name, trainable=trainable)
        card = next((layer for layer in self.layers if isinstance(layer, ModelSpec)), None)
        if card is None:
            raise ValueError(
                "SegmentationModel(inputs, outputs) takes the graph of a SegmentationModel "
                "(keras.models.clone_model does); for any other graph use "
                "keras.Model(inputs, outputs), or build by name with keras_deeplab.create_model."
            )
        self._config, self._spec = card.model_config, card.model_spec

    @classmethod
    def _from_graph(cls, inputs, outputs, config, spec, name, trainable=True, dtype=None):
        """A model around an existing graph whose `config` rebuilds the same graph.

        For graph rewrites that keep the weights (e.g. `optimize_for_inference`): building
        from `config` would make the same layers with fresh weights.
        """
        model = cls.__new__(cls)
        SegmentationModel._init_graph(model, inputs, outputs, config, spec, name, trainable, dtype)
        return model

    # ---------------------------------------------------------------- properties

    def _spec_value(self, key):
        return json.loads(self._spec)[key]

    @property
    def architecture(self):
        """The registered architecture, e.g. `"deeplabv3plus"`."""
        return self._spec_value("architecture")

    @property
    def backbone_name(self):
        """The canonical backbone name, e.g. `"xception65"` (None for backbone-less models)."""
        return self._spec_value("backbone")

    @property
    def output_stride(self):
        """Stride of the backbone's final features (inputs of `k * stride + 1` align best)."""
        return self._spec_value("output_stride")

    @property
    def num_classes(self):
        return self._spec_value("num_classes")

    @property
    def activation(self):
        """None (the model returns logits), `"softmax"` or `"sigmoid"`."""
        return self._spec_value("activation")

    @property
    def preprocessing(self):
        """Input normalisation inside the model (`"symmetric"` or `"caffe"`), taking RGB in
        [0, 255]; None when the model takes already normalised input."""
        return self._spec_value("preprocessing")

    @property
    def auxiliary_loss_weights(self):
        """`{output key: loss weight}` of the training-only auxiliary heads (e.g.
        `{"aux": 0.4}` for PSPNet); empty when the model has none. `model(x, training=True)`
        then returns `{"logits": ..., **{key: aux logits}}`, at the input size (DeepLab's
        `aux_taps` classifiers: at their tap's stride)."""
        if getattr(self, "_training_graph", None) is None:
            return {}
        return dict(self._spec_value("auxiliary_loss_weights") or {})

    def overlap_tile_padding(self, side):
        """`(before, after)` mirror padding of an image side of `side` pixels for models whose
        logits are smaller than their input (valid U-Net; the first `side` output pixels are
        the image's), None for the others (their output has the input's size)."""
        arch = get_architecture(self.architecture)
        if arch.overlap_tile is None:
            return None
        return arch.overlap_tile(json.loads(self._config), int(side))

    def call(self, inputs, training=None, mask=None):
        if training and getattr(self, "_training_graph", None) is not None:
            return self._training_graph(inputs, training=True)
        return super().call(inputs, training=training, mask=mask)

    @property
    def feature_info(self):
        """The backbone taps the heads see: `[{"name", "stride", "channels"}, ...]`."""
        return self._spec_value("feature_info")

    def get_backbone(self):
        """The nested backbone (a functional model mapping normalised images to the taps of
        `feature_info`), None when there is none. A method, not a property: Keras saves
        every layer-valued attribute, which would move the backbone's weights in the file."""
        name = self.backbone_name
        if name is None:
            return None
        try:
            return self.get_layer(f"{name}_backbone")
        except ValueError:
            return None

    # ---------------------------------------------------------------- config

    def get_config(self):
        config = json.loads(self._config)
        return {**config, "name": self.name, "trainable": self.trainable, "dtype": self._dtype}

    @property
    def _dtype(self):
        return self.dtype_policy.name

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def clone(self, copy_weights=False):
        """A new model with the same arguments (fresh weights; the same values with
        `copy_weights=True`). Unlike `keras.models.clone_model`, keeps the class."""
        clone = type(self).from_config(self.get_config())
        if copy_weights:
            clone.set_weights(self.get_weights())
        return clone

    def with_inference_options(self, fold=True, dtype_policy=None, space_to_batch=True):
        """This model rewritten for inference (see `optimize.optimize_for_inference`)."""
        graph = optimize.transform_graph(
            self,
            fold=fold,
            space_to_batch=space_to_batch,
            dtype_policy=dtype_policy,
            share_layers=True,
        )
        config = json.loads(self._config)
        done = config.get("inference") or {"fold": False, "space_to_batch": False}
        config["inference"] = {  # what this graph has had done to it, earlier rewrites included
            "fold": bool(fold or done["fold"]),
            "space_to_batch": bool(space_to_batch or done["space_to_batch"]),
            "dtype_policy": dtype_policy or done.get("dtype_policy"),
        }
        return SegmentationModel._from_graph(
            graph.input, graph.output, config, json.loads(self._spec), self.name, dtype=self._dtype
        )

    def count_macs(self, input_size, depthwise_only=False):
        """Multiply-adds for one image of `input_size` (height, width), counted by
        `keras_deeplab.macs` on this model's graph run at that size (`depthwise_only`: those
        of the depthwise convolutions). A model of a fixed input size is built again at the
        other size (heads may depend on the static size: e.g. DeepLab's image pooling)."""
        from keras_deeplab.macs import graph_macs, graph_takes_size, symbolic_macs

        input_size = tuple(input_size)
        config = self.get_config()
        config["input_shape"] = [*input_size, config["input_shape"][-1]]
        config.pop("inference", None)  # the rewrites move no multiply-add
        if graph_takes_size(self, input_size):
            arguments = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
            resolve_arguments(arguments.pop("architecture"), arguments)  # the size checks
            return symbolic_macs(self, input_size, depthwise_only)
        return graph_macs(type(self).from_config(config), depthwise_only)


__all__ = ["SegmentationModel", "resolve_arguments"]
