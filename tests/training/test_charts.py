"""PNG charts: real files of the promised size, drawn without pyplot's global state."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from training.charts import Panel, figure_size_px, plot_history, plot_panels


def _png(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, np.asarray(image.convert("RGB"))


def test_plot_panels_size_and_content(tmp_path: Path) -> None:
    panels = [
        Panel(title="a", x=[1, 2, 3], series={"y": [3.0, 1.0, 0.5]}, marks={"best": 2.0}),
        Panel(title="b", x=[1, 2, 3], series={"u": [1.0, math.nan, 2.0], "v": [2.0, 2.0, 1.0]},
              log_y=True, integer_x=True),
    ]
    out = plot_panels(panels, tmp_path / "nested" / "curves.png", title="t", dpi=80)
    assert out == tmp_path / "nested" / "curves.png"
    size, pixels = _png(out)
    assert size == figure_size_px(2, dpi=80) == (800, 320)
    # Lines were drawn: the image is not a blank white canvas.
    assert np.count_nonzero(pixels.min(axis=2) < 200) > 500
    # No figure left open in pyplot's registry.
    assert plt.get_fignums() == []


def test_plot_panels_rejects_mismatched_series(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 values for 3 x positions"):
        plot_panels([Panel(title="a", x=[1, 2, 3], series={"y": [1.0, 2.0]})],
                    tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one panel"):
        plot_panels([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_history(tmp_path: Path) -> None:
    history = {"loss": [0.5, 0.3, 0.2], "val_loss": [0.6, 0.4], "kl": [1.0, -0.5, 0.1],
               "empty": []}
    out = plot_history(history, tmp_path / "training_curves.png")
    size, _ = _png(out)
    assert size == figure_size_px(2)  # "loss" with its val_ series, and "kl"
    with pytest.raises(ValueError, match="non-empty"):
        plot_history({"loss": []}, tmp_path / "none.png")
