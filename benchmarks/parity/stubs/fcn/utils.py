"""`fcn.utils` stand-in (used only by torchfcn's Trainer, never by parity)."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("parity stub: fcn.utils is not available (benchmarks/parity/stubs)")


visualize_segmentation = get_tile_image = label_accuracy_score = _unavailable
