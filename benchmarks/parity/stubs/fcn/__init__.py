"""Stand-in for the `fcn` package (Chainer FCN) that `torchfcn.models` imports at module level.

Only `fcn.data.cached_download` (pretrained downloads) and `fcn.utils` (trainer visualisation) are
used by torchfcn; parity builds models with random weights and never calls them.
"""

from . import data, utils  # noqa: F401
