"""Where the tests and benchmarks of a checkout find the shared data (real images, weights).

`$KERAS_DEEPLAB_SHARED_DATA` if set, else `shared/data` beside the repository
(`../shared/data` from the checkout). Not used by the package itself; the tests wrap it in
a fixture that fails under `CI=true` and skips elsewhere (`tests/conftest.py`), the
benchmarks stop with the message.

Example:
    >>> voc = shared_data_dir("voc2012_samples")  # doctest: +SKIP
"""

import os
from pathlib import Path

SHARED_DATA_ENV = "KERAS_DEEPLAB_SHARED_DATA"
DEFAULT_SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def shared_data_dir(*parts):
    """The shared data folder, or the file / folder `parts` below it.

    Raises:
        FileNotFoundError: it does not exist; the message names the path and the fix.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    root = Path(env).expanduser() if env else DEFAULT_SHARED_DATA
    path = root.joinpath(*parts)
    if not path.exists():
        where = f"${SHARED_DATA_ENV}={env}" if env else f"{DEFAULT_SHARED_DATA} (beside the repo)"
        raise FileNotFoundError(
            f"shared data not found: {path} does not exist (shared data from {where}); fix: "
            f"put the shared data folder beside the repository or set {SHARED_DATA_ENV}."
        )
    return path
