"""Line-chart PNGs for reports (K selection, training curves), drawn with matplotlib's Agg.

Figures are built with the object API (``matplotlib.figure.Figure``), never ``pyplot``:
pyplot keeps a global registry of open figures and picks a GUI backend, neither of which
belongs in a training job or a test run. A ``Figure`` renders to PNG through Agg.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Panel:
    """One chart: several named series over a shared x axis, plus marked x positions.

    ``marks`` draws a labelled dashed vertical line at each x value (e.g. the chosen K).
    Non-finite y values leave a gap in their line.
    """

    title: str
    x: Sequence[float]
    series: Mapping[str, Sequence[float]]
    xlabel: str = ""
    ylabel: str = ""
    marks: Mapping[str, float] = field(default_factory=dict)
    log_y: bool = False
    integer_x: bool = False


def figure_size_px(
    n_panels: int, panel_size: tuple[float, float] = (5.0, 4.0), dpi: int = 100
) -> tuple[int, int]:
    """Pixel (width, height) of the PNG :func:`plot_panels` writes for ``n_panels`` panels."""
    return (round(panel_size[0] * n_panels * dpi), round(panel_size[1] * dpi))


def plot_panels(
    panels: Sequence[Panel],
    path: Path,
    *,
    title: str | None = None,
    panel_size: tuple[float, float] = (5.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Draw ``panels`` side by side and write them to ``path`` as a PNG; return ``path``.

    The image is exactly :func:`figure_size_px` pixels (no tight bounding box, so report
    pages can rely on the size). Parent directories are created.
    """
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    for panel in panels:
        for name, values in panel.series.items():
            if len(values) != len(panel.x):
                raise ValueError(
                    f"panel {panel.title!r}: series {name!r} has {len(values)} values "
                    f"for {len(panel.x)} x positions"
                )
    width, height = panel_size
    fig = Figure(figsize=(width * len(panels), height), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        for name, values in panel.series.items():
            ys = [v if math.isfinite(v) else math.nan for v in values]
            ax.plot(list(panel.x), ys, marker="o", markersize=3, label=name)
        for i, (name, x_mark) in enumerate(panel.marks.items()):
            # Distinct dash patterns: two marks at the same x stay distinguishable.
            ax.axvline(x_mark, color=f"C{len(panel.series) + i}",
                       linestyle=("--", ":", "-.")[i % 3], linewidth=1.5, label=name)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.log_y:
            ax.set_yscale("log")
        if panel.integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        if len(panel.series) + len(panel.marks) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    logger.info("wrote plot %s", path)
    return path


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: Path,
    *,
    panel_size: tuple[float, float] = (5.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Training curves from a Keras-style history (metric -> one value per epoch) as a PNG.

    One panel per metric, its ``val_`` counterpart drawn in the same panel; epochs count
    from 1. Panels whose values are all positive use a log scale, where loss curves are
    easier to read. Series shorter than the longest are padded with gaps.
    """
    names = [name for name in history if history[name]]
    if not names:
        raise ValueError("plot_history needs at least one non-empty series")
    bases: dict[str, list[str]] = {}
    for name in names:
        base = name.removeprefix("val_")
        bases.setdefault(base, []).append(name)
    panels = []
    for base, members in bases.items():
        length = max(len(history[m]) for m in members)
        series = {
            m: [float(v) for v in history[m]] + [math.nan] * (length - len(history[m]))
            for m in sorted(members, key=lambda m: m.startswith("val_"))
        }
        finite = [v for values in series.values() for v in values if math.isfinite(v)]
        panels.append(Panel(
            title=base, x=list(range(1, length + 1)), series=series, xlabel="epoch",
            ylabel=base, log_y=bool(finite) and min(finite) > 0, integer_x=True,
        ))
    return plot_panels(panels, path, title="Training curves", panel_size=panel_size, dpi=dpi)
