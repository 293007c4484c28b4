"""`fcn.data` stand-in: no downloads in the parity harness."""


def cached_download(url, *args, **kwargs):
    raise RuntimeError(
        f"parity stub: fcn.data.cached_download({url!r}) called; the parity harness builds "
        f"references with seeded random weights and never downloads (benchmarks/parity/stubs)"
    )
