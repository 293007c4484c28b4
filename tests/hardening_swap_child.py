"""Child process of tests/test_hardening_faults.py: SIGKILLed inside a SavedModel overwrite.

`python -m tests.hardening_swap_child TARGET POINT MARKER`: exports a 4-class model to the
existing SavedModel directory TARGET with `overwrite=True`; at POINT of the publication it
creates `MARKER` and sleeps until the parent kills it with SIGKILL.

The publication's steps are watched through `os.rename` and `saved_model._exchange`: a step
is a call that names TARGET (as source or destination).

Points:
    before: at the first step, before it runs (the new export is complete in its hidden
        temporary, TARGET untouched).
    after: right after the first step that succeeded (for an atomic exchange: TARGET holds the
        new export, the old one is not deleted yet; for two renames: between them).
"""

import os
import sys
from pathlib import Path

from tests.hardening_child import _stop_here


def main(target, point, marker):
    import keras_deeplab
    from keras_deeplab.export import saved_model

    if point not in ("before", "after"):
        raise SystemExit(f"unknown point {point}")
    target = Path(target).absolute()

    def watched(step, succeeded=lambda result: True):
        def call(a, b, *args, **kwargs):
            names_target = target in (Path(a).absolute(), Path(b).absolute())
            if names_target and point == "before":
                _stop_here(marker)
            result = step(a, b, *args, **kwargs)  # a failing step (an exception) is not one
            if names_target and succeeded(result):
                _stop_here(marker)
            return result

        return call

    os.rename = watched(os.rename)
    if hasattr(saved_model, "_exchange"):
        saved_model._exchange = watched(saved_model._exchange, succeeded=bool)
    model = keras_deeplab.create_model("deeplabv3_mobilenetv2_dm05_os8", num_classes=4)
    saved_model.to_saved_model(model, target, overwrite=True, verify=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
