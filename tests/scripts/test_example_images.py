"""The committed examples/*.png are what scripts/example_images.py writes: real digits, and
the script regenerates them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("example_images",
                                                  ROOT / "scripts" / "example_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_images_are_the_scripts() -> None:
    expected = _script().example_images()
    committed = {p.name for p in (ROOT / "examples").glob("*.png")}
    assert committed == set(expected)
    for name, pixels in expected.items():
        with Image.open(ROOT / "examples" / name) as image:
            assert image.mode == "L" and image.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(image), pixels, err_msg=name)


def test_the_script_writes_them(tmp_path: Path) -> None:
    written = _script().write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in
                                                     (ROOT / "examples").glob("*.png"))
