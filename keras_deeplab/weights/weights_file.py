"""Reading Keras 3 weights files (`.weights.h5`, `.keras` archives) by layer name.

`read_weights_file(path)` returns the arrays of every layer, keyed by the path of layer
names below the saved model (not by the file's internal object paths), so that they can be
matched to another model's layers by name (`keras_deeplab.weights.loading`).

Files written by plain Keras from a compiled model (`model.save("m.keras")`,
`model.save_weights("m.weights.h5")` after `fit`) also hold the optimizer's state in a
top-level `optimizer` group (Keras 3.15: `optimizer/vars`, plus
`optimizer/inner_optimizer/vars` for a `LossScaleOptimizer`); it is not model weights and
is ignored. A `.keras` archive carrying Python code (a Lambda layer) is refused.
"""

import io
import json
import zipfile
from contextlib import contextmanager

import h5py
import numpy as np

# Top-level groups of a weights file that hold training state, not layers: Keras 3
# writes the compiled optimizer's variables under `optimizer/` (checked with 3.15 for
# Adam, SGD and LossScaleOptimizer; metrics and losses write nothing).
TRAINING_STATE_GROUPS = ("optimizer",)


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
