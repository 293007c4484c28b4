"""torch -> Keras weight layouts (seed_systems.md §9.8) and `copy_weights`.

The layout functions work on numpy arrays; `assign`, `layer_arrays` and `copy_weights` take
Keras layers (keras is imported inside them, so the torch side may import this module too).

* conv `(O, I, kh, kw)` -> `(kh, kw, I, O)`; depthwise `(C*m, 1, kh, kw)` -> `(kh, kw, C, m)`;
* `ConvTranspose2d` `(I, O, kh, kw)` -> `Conv2DTranspose` `(kh, kw, O, I)`;
* linear `(out, in)` -> `(in, out)`;
* BatchNorm: `weight, bias, running_mean, running_var` -> gamma, beta, moving mean, moving
  variance; the Keras layer's epsilon must be torch's (1e-5 by default).

Example (Keras side):
`copy_weights(model, state, {"conv1": "features.0", "bn1": "features.1"})`.
"""

from dataclasses import dataclass

import numpy as np

TORCH_BN_EPS = 1e-5


def conv_kernel(weight):
    """torch `Conv2d.weight` `(O, I, kh, kw)` -> Keras `Conv2D` kernel `(kh, kw, I, O)`."""
    return np.transpose(_rank(weight, 4, "Conv2d weight (O, I, kh, kw)"), (2, 3, 1, 0))


def depthwise_kernel(weight):
    """torch depthwise `Conv2d.weight` `(C*m, 1, kh, kw)` (groups=C) -> Keras `(kh, kw, C, m)`.

    torch orders the output channels channel-major (`o = c * m + j`), as Keras does.
    """
    weight = _rank(weight, 4, "depthwise Conv2d weight (C*m, 1, kh, kw)")
    if weight.shape[1] != 1:
        raise ValueError(
            f"depthwise_kernel: a depthwise torch weight has shape (C*m, 1, kh, kw), got "
            f"{weight.shape}; for a grouped (not depthwise) conv use conv_kernel per group"
        )
    return np.transpose(weight[:, 0], (1, 2, 0))[..., None]


def depthwise_kernel_m(weight, multiplier):
    """As `depthwise_kernel` with a depth multiplier `m` > 1: `(C*m, 1, kh, kw)` -> `(kh, kw, C, m)`."""
    weight = _rank(weight, 4, "depthwise Conv2d weight (C*m, 1, kh, kw)")
    out, _, kh, kw = weight.shape
    if out % multiplier:
        raise ValueError(f"depthwise_kernel_m: {out} output channels is not C * {multiplier}")
    return np.transpose(weight.reshape(out // multiplier, multiplier, kh, kw), (2, 3, 0, 1))


def conv_transpose_kernel(weight):
    """torch `ConvTranspose2d.weight` `(I, O, kh, kw)` -> Keras `Conv2DTranspose` `(kh, kw, O, I)`."""
    return np.transpose(_rank(weight, 4, "ConvTranspose2d weight (I, O, kh, kw)"), (2, 3, 1, 0))


def dense_kernel(weight):
    """torch `Linear.weight` `(out, in)` -> Keras `Dense` kernel `(in, out)`."""
    return np.transpose(_rank(weight, 2, "Linear weight (out, in)"))


def _rank(array, rank, what):
    array = np.asarray(array)
    if array.ndim != rank:
        raise ValueError(f"expected a {what} of rank {rank}, got shape {array.shape}")
    return array


@dataclass(frozen=True)
class Arrays:
    """A `copy_weights` mapping value for a layer that is not a plain conv / BN / dense.

    `keys`: the torch keys consumed (counted as used); `values`: the Keras weights in the
    layer's `get_weights()` order, already converted. Example:
    `Arrays(("fc6.weight",), [my_reshape(state["fc6.weight"])])`.
    """

    keys: tuple
    values: list


def layer_arrays(layer, state, prefix, bn_eps=TORCH_BN_EPS):
    """`(torch keys, Keras arrays)` for `layer` from the torch tensors under `prefix`.

    Handles Conv2D, DepthwiseConv2D, Conv2DTranspose, Dense and BatchNormalization (and
    their subclasses); the bias is taken when the Keras layer has one.
    """
    import keras

    def take(name):
        key = f"{prefix}.{name}"
        if key not in state:
            near = sorted(k for k in state if k.startswith(prefix + "."))
            raise KeyError(
                f"Keras layer {layer.name!r} ({type(layer).__name__}) needs torch tensor "
                f"{key!r}, which the state dict lacks; tensors under {prefix!r}: {near or 'none'}"
            )
        return key, np.asarray(state[key])

    if isinstance(layer, keras.layers.BatchNormalization):
        if abs(layer.epsilon - bn_eps) > 1e-12:
            raise ValueError(
                f"Keras BatchNormalization {layer.name!r} has epsilon={layer.epsilon}, torch's "
                f"BatchNorm {prefix!r} uses eps={bn_eps}: build the Keras layer with "
                f"epsilon={bn_eps} (Keras' default 1e-3 breaks parity)"
            )
        names = (["weight"] if layer.scale else []) + (["bias"] if layer.center else [])
        pairs = [take(n) for n in [*names, "running_mean", "running_var"]]
        return [k for k, _ in pairs], [a for _, a in pairs]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        key, weight = take("weight")
        multiplier = layer.depth_multiplier
        kernel = (
            depthwise_kernel(weight) if multiplier == 1 else depthwise_kernel_m(weight, multiplier)
        )
        pairs = [(key, kernel)]
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        key, weight = take("weight")
        pairs = [(key, conv_transpose_kernel(weight))]
    elif isinstance(layer, keras.layers.Conv2D):
        key, weight = take("weight")
        pairs = [(key, conv_kernel(weight))]
    elif isinstance(layer, keras.layers.Dense):
        key, weight = take("weight")
        pairs = [(key, dense_kernel(weight))]
    else:
        raise TypeError(
            f"layer_arrays: no torch layout known for Keras layer {layer.name!r} "
            f"({type(layer).__name__}); pass Arrays(keys, values) for it in the mapping"
        )
    if getattr(layer, "use_bias", False):
        pairs.append(take("bias"))
    return [k for k, _ in pairs], [a for _, a in pairs]


def assign(layer, arrays, source="torch"):
    """Sets `layer`'s weights to `arrays` (its `get_weights()` order) after checking every shape.

    A count or shape mismatch is a ValueError naming the Keras weight and `source`.
    """
    weights = layer.weights
    if len(weights) != len(arrays):
        raise ValueError(
            f"Keras layer {layer.name!r} has {len(weights)} weights "
            f"({[w.path for w in weights]}), {source} gives {len(arrays)} arrays "
            f"(shapes {[np.shape(a) for a in arrays]})"
        )
    for weight, array in zip(weights, arrays, strict=True):
        if tuple(weight.shape) != tuple(np.shape(array)):
            raise ValueError(
                f"shape mismatch: Keras weight {weight.path} is {tuple(weight.shape)}, "
                f"{source} gives {tuple(np.shape(array))}"
            )
    layer.set_weights([np.asarray(a, dtype=w.dtype) for w, a in zip(weights, arrays, strict=True)])


def keras_layers_with_weights(model):
    """`{name: layer}` of every (nested) layer of `model` that owns weights itself."""
    from keras_deeplab._compat import all_layers

    found = {}
    for layer in all_layers(model):
        own = _own_weights(layer)
        if own:
            if layer.name in found and found[layer.name] is not layer:
                raise ValueError(f"two Keras layers are named {layer.name!r}: names must be unique")
            found[layer.name] = layer
    return found


def _own_weights(layer):
    """The weights a layer creates itself (not those of the layers nested in it)."""
    from keras_deeplab._compat import all_layers

    nested = {id(w) for sub in all_layers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in nested]


def copy_weights(model, state, mapping, bn_eps=TORCH_BN_EPS):
    """Copies the torch `state` into `model` by `mapping` and checks nothing is left over.

    `mapping`: `{keras layer name: torch prefix}` (e.g. `{"conv1": "backbone.conv1"}`) or
    `{keras layer name: Arrays(keys, values)}` for layers needing a custom layout. Every torch
    tensor and every Keras weight must be used exactly once: otherwise one ValueError lists the
    unused torch tensors, the Keras layers with weights left unassigned and the tensors used
    twice. Returns the number of torch tensors copied.
    """
    layers = keras_layers_with_weights(model)
    unknown = sorted(set(mapping) - set(layers))
    if unknown:
        raise ValueError(
            f"copy_weights: no Keras layer with weights named {unknown}; the model's are "
            f"{sorted(layers)}"
        )
    used = {}
    for name, source in mapping.items():
        layer = layers[name]
        if isinstance(source, Arrays):
            keys, arrays = list(source.keys), source.values
            for key in keys:
                if key not in state:
                    raise KeyError(
                        f"copy_weights: {name!r} uses torch tensor {key!r}, not in state"
                    )
        else:
            keys, arrays = layer_arrays(layer, state, source, bn_eps=bn_eps)
        assign(layer, arrays, source=f"torch {source if isinstance(source, str) else keys}")
        for key in keys:
            used.setdefault(key, []).append(name)
    unused = sorted(set(state) - set(used))
    twice = {key: names for key, names in used.items() if len(names) > 1}
    unassigned = sorted(set(layers) - set(mapping))
    if unused or twice or unassigned:
        raise ValueError(
            "copy_weights: every torch tensor and every Keras weight must be used exactly once; "
            f"unused torch tensors: {unused or 'none'}; Keras layers left unassigned: "
            f"{unassigned or 'none'}; torch tensors used more than once: {twice or 'none'}"
        )
    return len(used)
