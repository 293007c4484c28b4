#!/usr/bin/env bash
# Creates benchmarks/.venv-peers: an environment of its own for the keras-hub peer.
# keras-hub brings tensorflow-text, tokenizers, sentencepiece, huggingface_hub and kagglehub,
# none of which the package uses; a venv of their own keeps them (and any tensorflow/keras pin
# they would move) out of the project's .venv (tensorflow 2.21.0, keras 3.15.1).
# Usage: bash benchmarks/setup_peers.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv-peers"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
"$VENV/bin/python" -m pip install --quiet keras-hub
"$VENV/bin/python" -c 'import keras, keras_hub, tensorflow as tf; print("keras", keras.__version__, "keras_hub", keras_hub.__version__, "tensorflow", tf.__version__)'
