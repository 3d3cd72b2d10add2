"""TensorFlow without its start-up noise: what `edgewatch` does unless ``-v``.

TensorFlow's C++ start-up (absl's "before InitializeLog", oneDNN, cpu_feature_guard)
writes to file descriptor 2 while ``import tensorflow`` runs, before any Python
setting can stop it; its Python side adds deprecation and quantization warnings.
:func:`quiet_tensorflow` closes stderr around that import only and filters those
warnings; processes that edgewatch spawns inherit ``EDGEWATCH_QUIET_TF=1`` and call it too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import warnings


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow with the process's stderr closed, once.

    TensorFlow's C++ start-up (absl's "before InitializeLog", oneDNN,
    cpu_feature_guard) writes to file descriptor 2 before any Python setting
    can stop it; ``-v`` keeps these lines.
    """

    names = ("tensorflow",)

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader.exec_module

        def exec_module(module):
            with _stderr_closed():
                inner(module)
            with contextlib.suppress(Exception):
                import absl.logging

                absl.logging.set_verbosity(absl.logging.ERROR)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _stderr_closed():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow() -> None:
    """No TensorFlow start-up or C++ log lines in this process (nor in processes it starts)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["EDGEWATCH_QUIET_TF"] = "1"  # processes we spawn call quiet_tensorflow() too
    # their Python warnings too ("tf.lite.Interpreter is deprecated", quantization statistics)
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf_keras|absl)(\.|$)")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
