"""Stand-in for `acrv_datasets` (dataset downloads), imported by `refinenet/__init__.py`."""


def get_datasets(*args, **kwargs):
    raise RuntimeError(
        "parity stub: acrv_datasets.get_datasets called; the parity harness uses no datasets "
        "(benchmarks/parity/stubs)"
    )
