"""Reading ``centroids.joblib`` without running code from it.

A joblib file is a pickle, and unpickling can call any importable function: a bundle whose
``centroids.joblib`` had a ``__reduce__`` that calls ``eval`` ran that code in every serving
pod as the version loaded (issue 39). The checksum in the manifest did not help, since the
manifest sits in the same writable folder.

The format stays joblib (training writes it with ``joblib.dump``). It is read through
joblib's own unpickler, restricted to what a centroid file holds:

* the only globals are joblib's array wrapper, ``numpy.ndarray``, ``numpy.dtype`` and numpy's
  array reconstructor. Anything else (``builtins.eval``, ``os.system``, an estimator class)
  is refused by name before it is imported, so nothing of it runs;
* an array must have a numeric or boolean dtype. It is checked before its data is read:
  joblib reads object arrays with a second, unrestricted ``pickle.load``, which is never
  reached here;
* plain containers (dict, list, tuple, str, numbers) need no globals and load as usual.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
})
# bool, signed and unsigned integers, floats: what k-means centroids and counts are made of
NUMERIC_KINDS = "biuf"


class RefusedPickle(Exception):
    """The file holds something a centroid file never does; nothing of it was run."""


class _CentroidUnpickler(NumpyUnpickler):
    """joblib's unpickler, restricted to numeric arrays and plain containers."""

    dispatch = NumpyUnpickler.dispatch.copy()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedPickle(
                f"it refers to {module}.{name}, which a centroid file never holds "
                "(loading it could run code)"
            )
        return super().find_class(module, name)

    def load_build(self) -> None:
        # BUILD sets the state of the object below it on the stack. For joblib's wrapper
        # the state names the dtype of the array data that follows in the file.
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, NumpyArrayWrapper):
            _check_array_state(state)
        elif isinstance(target, np.ndarray) and isinstance(state, tuple):
            # numpy's own array pickle: (version, shape, dtype, is_fortran, data)
            dtypes = [item for item in state if isinstance(item, np.dtype)]
            _check_dtype(dtypes[0] if dtypes else None)
        NumpyUnpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def _check_array_state(state: Any) -> None:
    if not isinstance(state, dict):
        raise RefusedPickle("an array wrapper without its description")
    if state.get("subclass") is not np.ndarray:
        raise RefusedPickle(f"an array of class {state.get('subclass')!r}, not numpy.ndarray")
    _check_dtype(state.get("dtype"))


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise RefusedPickle(f"an array of dtype {dtype!r}; only numeric arrays are read")


def load(path: Path) -> Any:
    """The object in the uncompressed joblib file ``path`` (what ``joblib.dump`` writes).

    Raises RefusedPickle naming what it refused, and pickle's or joblib's own errors for a
    damaged file.
    """
    with path.open("rb") as handle:
        return _CentroidUnpickler(str(path), handle, ensure_native_byte_order=True).load()
