"""``npz:FILE``: a numpy archive of images.

Arrays: ``x`` (N, H, W) or (N, H, W, C) with C in 1, 3, 4 (alpha dropped), uint8 0..255
or float in [0, 1]; optional ``y`` integer labels (N,), -1 = unknown; optional
``class_names`` as a string array (object arrays are refused: loading them would unpickle).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from training.data.arrays import loaded_from_arrays
from training.data.base import DataOptions, LoadedData
from training.errors import DataError


def load_npz(path: Path, options: DataOptions) -> LoadedData:
    """Load ``x`` / ``y`` / ``class_names`` from ``path``; the held-out split is val_fraction."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(
                    f"{path}: has no array 'x' (found {sorted(archive.files) or 'none'}); "
                    "save images as x=..., labels as y=..."
                )
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
            names = archive["class_names"] if "class_names" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable numpy .npz archive ({exc})") from exc
    class_names = None
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: class_names must be a 1-D string array, got {names.dtype}")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    return loaded_from_arrays(f"npz:{path}", x, y, options, class_names=class_names)
