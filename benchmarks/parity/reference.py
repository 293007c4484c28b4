"""The reference file exchanged by the two sides, and the comparison of outputs.

One `.npz` per case, written by the torch side, read by the Keras side:

* `w:<torch state-dict key>`: every parameter and buffer of the reference (BatchNorm's
  `num_batches_tracked` counters are left out: no Keras weight corresponds);
* `x0, x1, ...`: the inputs, NHWC float32 (RGB 0..255 unless the system says otherwise);
* `y0, y1, ...`: the reference outputs for them, NHWC float32;
* `meta`: a JSON string (reference package and version, resize convention, ...).

numpy and the standard library only: both venvs import this module.
"""

import json

import numpy as np

# A case passes when max |keras - torch| <= REL_BOUND * max(1, max |torch logits|).
REL_BOUND = 1e-4
SKIPPED_BUFFERS = ("num_batches_tracked",)


def bound(logit_scale):
    """The allowed max abs difference for logits of magnitude `logit_scale`."""
    return REL_BOUND * max(1.0, float(logit_scale))


def save_reference(path, state, inputs, outputs, meta):
    """Writes a reference file (see the module docstring).

    `state`: `{torch key: array}` (a state dict already turned into numpy); `inputs`,
    `outputs`: lists of NHWC arrays, `outputs[i]` computed from `inputs[i]`; `meta`: a
    JSON-serialisable dict. Example (torch side):
    `save_reference(out, numpy_state(model), [x0, x1], [y0, y1], {"reference": "torchvision 0.29.1"})`.
    """
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(
            f"save_reference: inputs and outputs must be two non-empty lists of equal length, "
            f"got {len(inputs)} inputs and {len(outputs)} outputs"
        )
    arrays = {
        f"w:{key}": np.asarray(value)
        for key, value in state.items()
        if not key.endswith(SKIPPED_BUFFERS)
    }
    for i, (x, y) in enumerate(zip(inputs, outputs, strict=True)):
        arrays[f"x{i}"] = np.asarray(x, np.float32)
        arrays[f"y{i}"] = np.asarray(y, np.float32)
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


def load_reference(path):
    """`(state, inputs, outputs, meta)` of a reference file written by `save_reference`."""
    with np.load(path, allow_pickle=False) as data:
        state = {key[2:]: data[key] for key in data.files if key.startswith("w:")}
        count = sum(1 for key in data.files if key[0] == "x" and key[1:].isdigit())
        inputs = [data[f"x{i}"] for i in range(count)]
        outputs = [data[f"y{i}"] for i in range(count)]
        meta = json.loads(str(data["meta"]))
    return state, inputs, outputs, meta


def compare(outputs, references, inputs):
    """`{"max_abs_diff", "logit_scale", "sizes", "output_sizes"}`: Keras `outputs` vs torch's.

    All three are lists of NHWC arrays (`sizes` are the inputs' `[H, W]`); a shape mismatch is
    a ValueError naming both shapes.
    """
    max_diff, scale, sizes = 0.0, 0.0, [list(np.shape(x)[1:3]) for x in inputs]
    output_sizes = []
    for i, (out, ref) in enumerate(zip(outputs, references, strict=True)):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            raise ValueError(
                f"output {i}: the Keras model gives shape {out.shape}, the torch reference "
                f"{ref.shape} (both NHWC)"
            )
        if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
            raise ValueError(f"output {i}: NaN or infinity in the Keras or the torch output")
        max_diff = max(max_diff, float(np.max(np.abs(out - ref))))
        scale = max(scale, float(np.max(np.abs(ref))))
        output_sizes.append(list(ref.shape[1:3]))
    return {
        "max_abs_diff": max_diff,
        "logit_scale": scale,
        "sizes": sizes,
        "output_sizes": output_sizes,
    }
