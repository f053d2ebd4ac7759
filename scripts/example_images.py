"""Write the example images the docs' calls send: examples/digit-<label>.png.

Four of scikit-learn's digits (8x8 grey, the last images of the set), scaled from 0..16 to
0..255 and saved as PNG with Pillow. The files are committed; run this to regenerate them
(`tests/scripts/test_example_images.py` checks that the committed pixels are these):

    .venv/bin/python scripts/example_images.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
# Positions from the end of scikit-learn's digits: labels 8, 9, 0 and 5 (one file each).
INDICES_FROM_END = (1, 2, 4, 10)


def example_images() -> dict[str, np.ndarray]:
    """File name -> the uint8 pixels it holds."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = {f"digit-{digits.target[-i]}.png":
              np.round(digits.images[-i] / 16.0 * 255).astype(np.uint8)
              for i in INDICES_FROM_END}
    assert len(images) == len(INDICES_FROM_END), "two images would share a file name"
    return images


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in example_images().items():
        Image.fromarray(pixels, mode="L").save(out_dir / name)
        paths.append(out_dir / name)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "examples")
    for path in write(parser.parse_args().out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
