"""How each backend runs a model: Keras as built / folded / optimised / bf16, XLA,
SavedModel (default and optimised), TFLite fp32 / int8 (LiteRT).

`Backends(model, workdir).runner(backend, size)` is a callable `x [B, size, size, 3] float32 ->
output array`; exports and conversions are built lazily, once, and timed into `notes`.
"""

import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import run as run_tflite
from benchmarks._common import voc_samples

BACKENDS = ("keras", "keras_fold", "keras_opt", "keras_opt_bf16", "xla", "saved_model")
BACKENDS = (*BACKENDS, "saved_model_opt", "tflite_fp32", "tflite_int8")
BACKEND_LABELS = {
    "keras": "Keras tf.function",
    "keras_fold": "Keras, BN folded only",
    "keras_opt": "Keras optimised",
    "keras_opt_bf16": "Keras optimised + bf16",
    "xla": "XLA (jit_compile)",
    "saved_model": "SavedModel",
    "saved_model_opt": "SavedModel optimised",
    "tflite_fp32": "TFLite fp32",
    "tflite_int8": "TFLite int8",
}
KERAS_BACKENDS = ("keras", "keras_fold", "keras_opt", "keras_opt_bf16", "xla")


def random_images(batch, size, seed=0):
    """`[batch, size, size, 3]` float32 pixels uniform in 0..255."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def calibration_images(size):
    """`(images, source)`: the 8 VOC 2012 val images at `size`, or 8 synthetic ones without
    the shared data."""
    try:
        return [rgb for _, rgb, _ in voc_samples(size)], "VOC 2012 val"
    except SystemExit:  # shared data missing
        from keras_deeplab.export.images import synthetic_images

        return synthetic_images((size, size), count=8), "synthetic"


def keras_fn(model, jit_compile=False):
    """`model(x, training=False)` in a `tf.function` (XLA-compiled with `jit_compile`)."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)


class Backends:
    """Lazily built runners `(backend, size) -> callable(batch array) -> output array`."""

    def __init__(self, model, workdir, num_threads=2):
        self.model, self.workdir, self.num_threads = model, Path(workdir), num_threads
        self._variants = {}
        self._saved = {}
        self._fns = {}
        self.notes = {}

    def _variant(self, backend):
        """The Keras model `backend` runs: as built, BN folded, optimised, optimised + bf16."""
        if backend in ("keras", "xla"):
            return self.model
        if backend not in self._variants:
            from keras_deeplab.optimize import fold_batch_norm, optimize_for_inference

            self._variants[backend] = {
                "keras_fold": lambda: fold_batch_norm(self.model),
                "keras_opt": lambda: optimize_for_inference(self.model),
                "keras_opt_bf16": lambda: optimize_for_inference(
                    self.model, dtype_policy="mixed_bfloat16"
                ),
            }[backend]()
        return self._variants[backend]

    def saved(self, optimize):
        """The `serve` signature of the model exported by `to_saved_model` (once per flag)."""
        if optimize not in self._saved:
            import tensorflow as tf

            from keras_deeplab.export import to_saved_model

            name = "saved_model_opt" if optimize else "saved_model"
            path = self.workdir / name
            start = time.perf_counter()
            to_saved_model(self.model, path, verify=False, overwrite=True, optimize=optimize)
            self.notes[f"{name}_export_s"] = round(time.perf_counter() - start, 2)
            self._saved[optimize] = tf.saved_model.load(str(path)).signatures["serve"]
        return self._saved[optimize]

    def tflite(self, size, quantize):
        """A LiteRT interpreter of the model converted at `size` (`quantize`: fp32 or int8)."""
        key = ("tflite", size, quantize)
        if key not in self._fns:
            from ai_edge_litert.interpreter import Interpreter

            from keras_deeplab.export import to_tflite
            from keras_deeplab.export.tflite import UNALIGNED_WARNING

            path = self.workdir / f"model_{size}_{quantize}.tflite"
            calibration = None
            if quantize == "int8":
                calibration, source = calibration_images(size)
                self.notes["int8_calibration"] = f"{len(calibration)} {source} images"
            start = time.perf_counter()
            with warnings.catch_warnings():  # latency at the sizes of the other backends
                warnings.filterwarnings("ignore", message=UNALIGNED_WARNING)
                to_tflite(
                    self.model,
                    path,
                    input_size=size,
                    quantize="none" if quantize == "fp32" else "int8",
                    representative_data=calibration,
                    representative_steps=None if calibration is None else len(calibration),
                    verify=False,
                )
            self.notes[f"tflite_{quantize}_{size}_convert_s"] = round(
                time.perf_counter() - start, 2
            )
            it = Interpreter(model_path=str(path), num_threads=self.num_threads)
            it.allocate_tensors()
            self._fns[key] = it
        return self._fns[key]

    def runner(self, backend, size):
        """callable(x [B, size, size, 3] float32) -> output array, for `backend`."""
        import tensorflow as tf

        if backend in KERAS_BACKENDS:
            if backend not in self._fns:
                model = self._variant(backend)
                self._fns[backend] = keras_fn(model, jit_compile=backend == "xla")
            fn = self._fns[backend]
            return lambda x: fn(tf.constant(x)).numpy()
        if backend in ("saved_model", "saved_model_opt"):
            serve = self.saved(backend == "saved_model_opt")
            return lambda x: next(iter(serve(images=tf.constant(x)).values())).numpy()
        if backend.startswith("tflite_"):
            it = self.tflite(size, backend.split("_")[1])

            def invoke(x):
                return np.concatenate([run_tflite(it, x[i : i + 1]) for i in range(len(x))])

            return invoke
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
