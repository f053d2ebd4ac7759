"""Tests of training.data.loader: spec parsing and the errors users see."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from training.data import SOURCE_HELP, DataOptions, load_dataset, to_numpy, write_tfrecord
from training.errors import DataError


def test_help_names_every_spec_form() -> None:
    for form in ("digits", "fashion-mnist", "idx:DIR", "images:DIR", "tfrecord:FILE",
                 "csv:FILE", "cifar10:DIR", "npz:FILE"):
        assert form in SOURCE_HELP


@pytest.mark.parametrize("spec", ["mnist", "hdf5:/x", ""])
def test_unknown_specs_list_the_valid_forms(spec: str) -> None:
    with pytest.raises(DataError, match="unknown dataset spec") as info:
        load_dataset(spec, DataOptions())
    assert "cifar10:DIR" in str(info.value)


@pytest.mark.parametrize("spec", ["idx:", "images: ", "images", "tfrecord:,", "npz:"])
def test_forms_without_a_path_say_so(spec: str) -> None:
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(spec, DataOptions())


def test_missing_paths_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    for kind in ("idx", "images", "cifar10"):
        with pytest.raises(DataError, match=re.escape(f"{missing}: no such directory")):
            load_dataset(f"{kind}:{missing}", DataOptions())
    for kind in ("csv", "npz"):
        with pytest.raises(DataError, match=re.escape(f"{missing}: no such file")):
            load_dataset(f"{kind}:{missing}", DataOptions())
    with pytest.raises(DataError, match="Fashion-MNIST folder not found"):
        load_dataset("fashion-mnist", DataOptions(data_dir=missing))


def test_options_are_checked_before_reading() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", DataOptions(val_fraction=1.0))
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("digits:/tmp", DataOptions())


def test_specs_reach_their_sources(tmp_path: Path) -> None:
    digits = load_dataset(" digits ", DataOptions(val_fraction=0.0))
    assert digits.source == "digits" and digits.train.size == 1797
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 3), np.uint8))
    npz = load_dataset(f"npz:{tmp_path / 'd.npz'}", DataOptions(val_fraction=0.0))
    assert npz.source == f"npz:{tmp_path / 'd.npz'}"
    write_tfrecord(npz, tmp_path / "a.tfrecord")
    write_tfrecord(npz, tmp_path / "b.tfrecord")
    both = load_dataset(f"tfrecord:{tmp_path / 'a.tfrecord'},{tmp_path / 'b.tfrecord'}",
                        DataOptions(val_fraction=0.0))
    assert both.train.size == 8 and both.source.count(".tfrecord") == 2
    assert to_numpy(both.train)[0].shape == (8, 3, 3, 1)
