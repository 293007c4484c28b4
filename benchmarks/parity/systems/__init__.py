"""Parity systems: one module per reference (`CASES`, `torch_reference`, `keras_check`).

See docs/parity.md for the interface; `conv_bn` is the harness's own proof system.
"""
