"""matplotlib figures of the report: 2-D maps, the contingency heat map, the code strip.

Like :mod:`training.charts`, figures are built with the object API (never ``pyplot``) and
saved without a tight bounding box, so each PNG is exactly ``figsize * dpi`` pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 100


def palette(n: int) -> np.ndarray:
    """``n`` distinguishable RGBA colours: tab10/tab20 when they suffice, else turbo."""
    if n <= 20:
        # Qualitative maps have 10 or 20 entries; index them, do not interpolate.
        name = "tab10" if n <= 10 else "tab20"
        return colormaps[name](np.arange(n))
    return colormaps["turbo"](np.linspace(0.0, 1.0, n))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    logger.info("wrote figure %s", path)
    return path


def map_size_px(n_panels: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`plot_map` with ``n_panels`` panels."""
    return 600 * n_panels, 560


def _scatter_groups(
    ax: Axes, xy: np.ndarray, groups: np.ndarray, names: Sequence[str], title: str,
    annotate: bool,
) -> None:
    colors = palette(len(names))
    size = float(np.clip(6000.0 / max(len(xy), 1), 2.0, 30.0))
    for g, name in enumerate(names):
        members = groups == g
        if not np.any(members):
            continue
        ax.scatter(xy[members, 0], xy[members, 1], s=size, color=colors[g],
                   linewidths=0, alpha=0.8, label=name)
        if annotate:
            cx, cy = np.median(xy[members], axis=0)
            ax.annotate(str(g), (cx, cy), fontsize=8, weight="bold", ha="center",
                        va="center", bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                           "alpha": 0.7, "lw": 0})
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= 20:
        ax.legend(fontsize="x-small", markerscale=max(1.0, 20.0 / size) ** 0.5,
                  loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plot_map(
    xy: np.ndarray,
    cluster_ids: np.ndarray,
    n_clusters: int,
    path: Path,
    *,
    method: str,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] = (),
) -> Path:
    """Scatter of 2-D points coloured by cluster and, when ``labels`` are given, by label.

    Cluster ids are written at the median point of each cluster so the map can be read
    without matching colours.
    """
    n_panels = 1 if labels is None else 2
    width, height = map_size_px(n_panels)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    _scatter_groups(axes[0], xy, cluster_ids, [f"cluster {c}" for c in range(n_clusters)],
                    f"{method}, coloured by cluster", annotate=True)
    if labels is not None:
        known = labels >= 0
        _scatter_groups(axes[1], xy[known], labels[known], list(label_names),
                        f"{method}, coloured by label", annotate=False)
    fig.suptitle(f"2-D map of {len(xy)} embeddings ({method})")
    return _save(fig, path)


def contingency_size_px(n_clusters: int, n_classes: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`plot_contingency`."""
    width = min(3.0 + 0.6 * n_classes, 24.0)
    height = min(2.0 + 0.35 * n_clusters, 40.0)
    return round(width * DPI), round(height * DPI)


def plot_contingency(
    table: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], path: Path
) -> Path:
    """Heat map of a cluster x class count table; colour = share of the cluster's row."""
    counts = np.asarray(table, dtype=np.int64)
    n_rows, n_cols = counts.shape
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    width, height = contingency_size_px(n_rows, n_cols)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_cols), labels=list(col_names), rotation=45, ha="right",
                  fontsize="small")
    ax.set_yticks(range(n_rows), labels=list(row_names), fontsize="small")
    ax.set_xlabel("label")
    ax.set_ylabel("cluster")
    if n_rows * n_cols <= 900:
        for r in range(n_rows):
            for c in range(n_cols):
                if counts[r, c]:
                    ax.text(c, r, str(counts[r, c]), ha="center", va="center", fontsize=7,
                            color="white" if share[r, c] > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="share of the cluster", shrink=0.8)
    ax.set_title("Clusters x labels (counts; colour = share of the cluster)")
    return _save(fig, path)


def codes_size_px(n_rows: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`plot_codes` with ``n_rows`` images."""
    return 1000, round((0.6 * n_rows + 1.2) * DPI)


def plot_codes(
    thumbnails: np.ndarray, codes: np.ndarray, row_names: Sequence[str], path: Path
) -> Path:
    """Each image (uint8 RGB [n, h, w, 3]) beside its embedding vector as a heat strip.

    One diverging colour scale for every row, centred on zero, so the strips compare.
    """
    n, dim = codes.shape
    width, height = codes_size_px(n)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[1, 12])
    limit = float(np.max(np.abs(codes))) or 1.0
    strip = None
    for i in range(n):
        left, right = axes[i]
        left.imshow(thumbnails[i], interpolation="nearest")
        left.set_axis_off()
        strip = right.imshow(codes[i:i + 1], cmap="RdBu_r", vmin=-limit, vmax=limit,
                             aspect="auto", interpolation="nearest")
        right.set_yticks([0], labels=[row_names[i]], fontsize="small")
        if i == n - 1:
            step = max(1, dim // 16)
            right.set_xticks(range(0, dim, step))
            right.set_xlabel("embedding dimension")
        else:
            right.set_xticks([])
    assert strip is not None
    fig.colorbar(strip, ax=axes[:, 1].tolist(), label="value", shrink=0.8)
    fig.suptitle("Embedding vectors (codes) of a few images")
    return _save(fig, path)
