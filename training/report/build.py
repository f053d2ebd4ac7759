"""``python -m training report``: gather the sample, draw every panel, write the page."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits

from training.report import panels
from training.report.gather import ReportData, ReportOptions, gather
from training.report.html import Figure, Omitted, Section, write_page
from training.report.projector import ProjectorFiles, write_projector

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


@dataclass
class ReportResult:
    """What was written, for the CLI's summary and for tests."""

    html: Path
    sections: list[str]
    figures: list[Path]
    omitted: list[str]  # panels left out (see the page for why)
    n_images: int
    seconds: float
    projector: ProjectorFiles | None = None
    timings: dict[str, float] = field(default_factory=dict)


def write_report_projector(data: ReportData, directory: Path) -> ProjectorFiles:
    """The sample's embeddings for TensorBoard's projector, with cluster and label columns."""
    m = data.manifest
    outliers = data.outliers()
    metadata = {
        "cluster": [str(c) for c in data.cluster_ids],
        "label": [data.label_name(int(y)) for y in data.labels],
        "cluster_label": [m.cluster_label(int(c)) or "-" for c in data.cluster_ids],
        "distance": [f"{d:.4f}" for d in data.distances],
        "outlier": ["yes" if o else "no" for o in outliers],
    }
    return write_projector(directory, data.embeddings, data.images, metadata,
                           tensor_name=f"{m.name}_v{m.version}_{data.split}")


def build_report(
    bundle_path: Path, dataset: str, out: Path, options: ReportOptions | None = None
) -> ReportResult:
    """Write ``out/report.html`` (and its figures under ``out/figures/``) for a bundle."""
    options = options or ReportOptions()
    started = time.monotonic()
    data = gather(bundle_path, dataset, options)
    out.mkdir(parents=True, exist_ok=True)
    # Figures of an earlier run (e.g. a UMAP map) must not linger beside the new page.
    for stale in (out / panels.FIGURES_DIR).glob("*.png"):
        stale.unlink()
    steps: list[tuple[str, Callable[[], Section]]] = [
        ("overview", lambda: panels.overview(data)),
        ("training-curves", lambda: panels.training_curves(data, out)),
        ("reconstructions", lambda: panels.reconstructions(data, out)),
        ("k-selection", lambda: panels.k_selection(data, out)),
        ("galleries", lambda: panels.galleries(data, out)),
        ("embedding-map", lambda: panels.embedding_map(data, out,
                                                       max_points=options.map_points)),
        ("contingency", lambda: panels.contingency(data, out)),
        ("codes", lambda: panels.codes(data, out)),
        ("manifold", lambda: panels.manifold(data, out)),
    ]
    sections: list[Section] = []
    timings: dict[str, float] = {}
    # scikit-learn's OpenMP loops (k-means, t-SNE) on a few thousand points: with the cores
    # shared (CI, other jobs) their threads spin-wait on each other and one thread is 10-50x
    # faster than two (measured: 19 k-means fits of 5,000 embeddings 25 s -> ~2 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        for i, (name, step) in enumerate(steps, start=1):
            logger.info("report: panel %d/%d: %s", i, len(steps), name)
            t0 = time.monotonic()
            sections.append(step())
            timings[name] = round(time.monotonic() - t0, 2)
    m = data.manifest
    html = write_page(
        out / REPORT_FILE,
        f"aecluster report: {m.name} version {m.version}",
        f"{data.n} {data.split} images of {data.source}; bundle {bundle_path}",
        sections,
    )
    projector = None
    if options.projector_dir is not None:
        projector = write_report_projector(data, options.projector_dir)
    blocks = [b for s in sections for b in s.blocks]
    result = ReportResult(
        html=html,
        sections=[s.id for s in sections],
        figures=[out / b.path for b in blocks if isinstance(b, Figure)],
        omitted=[b.panel for b in blocks if isinstance(b, Omitted)],
        n_images=data.n,
        seconds=round(time.monotonic() - started, 2),
        projector=projector,
        timings=timings,
    )
    logger.info("report: wrote %s (%.1f MB, %d figures) in %.1f s", html,
                html.stat().st_size / 2**20, len(result.figures), result.seconds)
    return result
