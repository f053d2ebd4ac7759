"""``load_dataset``: turn a ``--dataset`` spec string into :class:`LoadedData`."""

from __future__ import annotations

import logging
from pathlib import Path

from training.data.base import DataOptions, LoadedData
from training.data.cifar10 import load_cifar10
from training.data.digits import load_digits_data
from training.data.idx import load_fashion_mnist, load_idx_dir
from training.data.images import load_image_folder
from training.data.kaggle_csv import load_kaggle_csv
from training.data.npz import load_npz
from training.data.tfrecord import load_tfrecords
from training.errors import DataError

logger = logging.getLogger(__name__)

SOURCE_HELP = """\
dataset spec, one of:
  digits                   scikit-learn's 8x8 digits (1797 images, labels 0-9)
  fashion-mnist[:DIR]      Fashion-MNIST IDX .gz files (default folder
                           /usr/share/datasets/fashion-mnist or --data-dir); t10k is held out
  idx:DIR                  MNIST-format IDX files (MNIST, KMNIST, EMNIST, ...); train/t10k
                           (or *train*/*test*) pairs give the split; labels optional
  images:DIR               PNG/JPEG images under DIR, recursive; labels from first-level
                           sub-folders or a path,label CSV (--labels-file)
  tfrecord:FILE[,FILE...]  TFRecord files of tf.train.Example (image PNG bytes, label int64;
                           see `python -m training to-tfrecord`)
  csv:FILE                 Kaggle digit-recognizer CSV (label?, pixel0..pixelN, 0-255)
  cifar10:DIR              CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)
  npz:FILE                 numpy archive: x (N,H,W[,C]) uint8 or float [0,1], optional y,
                           class_names"""


def _path(kind: str, arg: str) -> Path:
    if not arg.strip():
        example = "DIR" if kind in {"idx", "images", "cifar10"} else "FILE"
        raise DataError(f"dataset spec '{kind}:' needs a path, as in {kind}:{example}")
    return Path(arg.strip()).expanduser().absolute()


def load_dataset(spec: str, options: DataOptions) -> LoadedData:
    """Load the dataset ``spec`` names (see :data:`SOURCE_HELP`) with ``options``.

    Raises :class:`training.errors.DataError` with the path and the problem when the spec,
    the options or the files are not usable.
    """
    options.validate()
    kind, has_arg, arg = spec.strip().partition(":")
    kind = kind.lower()
    logger.info("loading dataset %s", spec)
    if kind == "digits":
        if arg.strip():
            raise DataError(f"dataset 'digits' takes no path, got {spec!r}")
        return load_digits_data(options)
    if kind == "fashion-mnist":
        if arg.strip():
            folder = _path(kind, arg)
        elif options.data_dir is not None:
            folder = options.data_dir.expanduser().absolute()
        else:
            folder = Path("/usr/share/datasets/fashion-mnist")
        return load_fashion_mnist(folder, options)
    if kind == "idx" and has_arg:
        return load_idx_dir(_path(kind, arg), options)
    if kind == "images" and has_arg:
        return load_image_folder(_path(kind, arg), options)
    if kind == "tfrecord" and has_arg:
        files = [_path(kind, part) for part in arg.split(",") if part.strip()]
        if not files:
            _path(kind, "")
        return load_tfrecords(files, options)
    if kind == "csv" and has_arg:
        return load_kaggle_csv(_path(kind, arg), options)
    if kind == "cifar10" and has_arg:
        return load_cifar10(_path(kind, arg), options)
    if kind == "npz" and has_arg:
        return load_npz(_path(kind, arg), options)
    if kind in {"idx", "images", "tfrecord", "csv", "cifar10", "npz"}:
        _path(kind, "")
    raise DataError(f"unknown dataset spec {spec!r}; {SOURCE_HELP}")
