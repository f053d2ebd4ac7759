"""The visual training report (``python -m training report``) and TensorBoard projector files.

Modules: ``gather`` (sample a split and run it through the bundle), ``panels`` (one function
per panel), ``figures`` (matplotlib drawings), ``tiles`` (pixel-exact thumbnail grids),
``maps`` (t-SNE), ``html`` (the page), ``projector`` (TensorBoard's embedding
projector), ``build`` (all of it in order).
"""

from __future__ import annotations

from training.report.build import REPORT_FILE, ReportResult, build_report
from training.report.gather import ReportOptions
from training.report.projector import ProjectorFiles, write_projector

__all__ = [
    "REPORT_FILE",
    "ProjectorFiles",
    "ReportOptions",
    "ReportResult",
    "build_report",
    "write_projector",
]
