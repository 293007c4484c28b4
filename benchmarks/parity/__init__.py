"""PyTorch parity: equal weights in a PyTorch reference and our Keras model give equal logits.

`python -m benchmarks.parity [--systems a,b]` (in the main venv; `make parity`) runs, for every
case of every system module `benchmarks/parity/systems/<name>.py`, the torch side in its own venv
(`benchmarks/.venv-parity`, `make parity-venv`) and the Keras side here, and records the max abs
difference of the logits in `benchmarks/results/parity.json`. Method and results: docs/parity.md.

Modules: `driver` (discovery, subprocess, bound, JSON, docs table), `torch_side` (entry point and
helpers of the torch venv), `reference` (the .npz exchanged, the comparison), `convert` (torch ->
Keras weight layouts, `copy_weights`). Only numpy and the standard library at module level.
"""
