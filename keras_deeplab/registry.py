"""The registries: segmentation heads, architectures and named models.

* A **head** (`register_head`) is a building block applied to backbone features, e.g.
  `"aspp"`, `"decoder"`, `"largefov"`; it declares its options and their defaults.
* An **architecture** (`register_architecture`) says how a `SegmentationModel` is built:
  a registered backbone followed by a chain of heads (`heads`), or a whole-model graph
  function (`graph`) when the architecture is not backbone + head (U-Net, SegNet).
* A **model** (`register_model`) is a named configuration of an architecture, what
  `create_model(name)` builds and `list_models()` lists.

This module only holds the tables; the architecture modules (`keras_deeplab.architectures`)
fill them on import. Adding an architecture is one module under `heads/` or
`architectures/` (its heads, its `register_architecture` and `register_model` calls), one
import line in `keras_deeplab/architectures/__init__.py`, and tests.

Example:

```python
from keras_deeplab.registry import Architecture, register_architecture

register_architecture(
    Architecture(
        name="fcn32",
        heads=lambda args: ("fcn", "logits"),
        options={"dropout": 0.5},
        default_backbone="vgg16",
        default_output_stride=32,
    )
)
```
"""

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

HEADS = {}
ARCHITECTURES = {}
MODELS = {}
UPSAMPLE_MODES = ("align_corners", "half_pixel", None)

# Arguments every architecture takes (`SegmentationModel`), with their defaults.
COMMON_ARGUMENTS = {
    "backbone": None,
    "num_classes": 21,
    "input_shape": (None, None, 3),
    "output_stride": None,
    "activation": None,
    "include_preprocessing": True,
}


@dataclasses.dataclass(frozen=True)
class Head:
    """A head: `build(x, features, args) -> tensor`.

    Attributes:
        name: registry name.
        build: called with the previous tensor `x` (the backbone's `"final"` tap for the
            first head), the backbone taps `features` and the model's resolved arguments.
        options: the head's options and their defaults (the architecture's `options`
            must list the ones it exposes).
        description: one line for `list_heads()` readers.
        upsample_logits: for a training-only auxiliary head: True resizes its logits to the
            input size in the training output; False keeps them at their feature stride, and
            the loss (`loss_terms`) compares them with the labels downsampled to their size
            (the official `upsample_logits=False`; cheaper).
    """

    name: str
    build: Callable
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    upsample_logits: bool = True


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How a `SegmentationModel` of one architecture is built.

    Attributes:
        name: registry name, the model's `architecture` property (e.g. `"deeplabv3plus"`).
        heads: `args -> tuple of head names`, applied in order to the backbone taps; the
            last one returns logits at the backbone's stride. None when `graph` is set.
        graph: whole-model builder `(x, args) -> logits` for architectures that are not
            backbone + heads (`x` is the preprocessed image tensor). None when `heads` is set.
        options: the architecture's own arguments (beyond `COMMON_ARGUMENTS`) and defaults.
        default_backbone: backbone when `backbone=None`.
        default_output_stride: output stride when `output_stride=None`.
        backbones: the backbones it accepts (None: every registered one).
        resolve: `args -> args`, normalises and checks the options (raises `ValueError`
            with the fix); `args` already holds the canonical backbone and output stride.
        multi_scale: accepts `multi_scale=True` (wrapped in `MultiScaleInputs`).
        preprocessing: input normalisation when there is no backbone (a mode of
            `keras_deeplab.layers.PREPROCESSING_MODES`); with a backbone, the backbone's.
        upsample: how the logits reach the input size: `"align_corners"` (the DeepLab /
            Caffe bilinear), `"half_pixel"` (torch's `align_corners=False`), or None when the
            graph returns its final logits itself (FCN's crops, valid U-Net).
        input_channels: channels of the input image (None: any, `input_shape[-1]` decides).
        auxiliary: `args -> tuple of (head name, loss weight)`: training-only heads on the
            backbone taps (each head's `build` gets the `"final"` tap and picks its own).
            Their weights are part of the model; its inference graph (`model(x)`, exports)
            has only the main logits, and `model(x, training=True)` returns
            `{"logits": ..., "aux": ..., "aux_1": ...}`.
        overlap_tile: `(args, side) -> (before, after) | None`, for architectures whose logits
            are smaller than their input (valid U-Net): the mirror padding of an image side of
            `side` pixels after which the output covers it (the first `side` output pixels
            belong to the image; `before` must equal the border the network loses).
        description: one line for readers of `list_architectures()`.
    """

    name: str
    heads: Callable | None = None
    graph: Callable | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default_backbone: str | None = None
    default_output_stride: int = 16
    backbones: tuple | None = None
    resolve: Callable | None = None
    multi_scale: bool = False
    preprocessing: str = "symmetric"
    upsample: str | None = "align_corners"
    input_channels: int | None = 3
    auxiliary: Callable | None = None
    overlap_tile: Callable | None = None
    description: str = ""

    def arguments(self):
        """Every argument `SegmentationModel(architecture=self.name, ...)` takes, with defaults."""
        return {
            **COMMON_ARGUMENTS,
            "backbone": self.default_backbone,
            "output_stride": self.default_output_stride,
            **self.options,
        }


def register_head(head):
    """Adds a `Head` to the registry (a name registered twice is an error)."""
    _add(HEADS, head.name, head, "head")
    return head


def register_architecture(architecture):
    """Adds an `Architecture` to the registry (a name registered twice is an error)."""
    if (architecture.heads is None) == (architecture.graph is None):
        raise ValueError(f"Architecture {architecture.name!r}: give exactly one of heads, graph.")
    if architecture.upsample not in UPSAMPLE_MODES:
        raise ValueError(
            f"Architecture {architecture.name!r}: upsample must be one of {UPSAMPLE_MODES}; "
            f"got {architecture.upsample!r}."
        )
    _add(ARCHITECTURES, architecture.name, architecture, "architecture")
    return architecture


def register_model(name, architecture, **config):
    """Registers the named model `name`: `architecture` with the arguments `config`."""
    _add(MODELS, name, (architecture, dict(config)), "model")


def _add(table, name, value, what):
    if name in table:
        raise ValueError(f"The {what} {name!r} is already registered.")
    table[name] = value


def _unknown(what, name, known):
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"Unknown {what} {name!r}{hint}. Registered: {', '.join(sorted(known))}.")


def get_head(name):
    """The registered `Head` called `name`; the error lists the registered ones."""
    if name not in HEADS:
        raise _unknown("head", name, list(HEADS))
    return HEADS[name]


def get_architecture(name):
    """The registered `Architecture` called `name`; the error lists the registered ones."""
    if name not in ARCHITECTURES:
        raise _unknown("architecture", name, list(ARCHITECTURES))
    return ARCHITECTURES[name]


def check_arguments(architecture, arguments, accepted_extra=(), what=None):
    """Raises one `ValueError` naming every unknown key of `arguments` and listing the
    accepted ones (`architecture`'s arguments plus `accepted_extra`)."""
    accepted = [*get_architecture(architecture).arguments(), *accepted_extra]
    unknown = [key for key in arguments if key not in accepted]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, accepted, n=1)
            if close:
                hints.append(f"{key!r} -> {close[0]!r}")
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(
            f"{what or architecture}: unknown argument{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}{hint}; accepted: {', '.join(accepted)}."
        )


__all__ = [
    "ARCHITECTURES",
    "COMMON_ARGUMENTS",
    "HEADS",
    "MODELS",
    "Architecture",
    "Head",
    "check_arguments",
    "get_architecture",
    "get_head",
    "register_architecture",
    "register_head",
    "register_model",
]
