"""The report page: sections of text, tables and PNG figures rendered to one HTML file.

Figures are embedded as base64 ``data:`` URIs, so ``report.html`` alone is the whole report
(mail it, open it offline); the PNG files stay beside it for reuse. No script, font or
stylesheet is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from training.files import write_text_atomic


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text (escaped when rendered)."""

    text: str
    css_class: str = ""


@dataclass(frozen=True)
class Omitted:
    """A panel that was left out, and why (rendered as a visible note)."""

    panel: str
    reason: str


@dataclass(frozen=True)
class Figure:
    """A PNG written beside the report; its pixel size is read from the file."""

    path: Path
    alt: str
    caption: str = ""
    element_id: str = ""


@dataclass(frozen=True)
class Table:
    """A small table of already formatted cells."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section (e.g. one cluster of the galleries)."""

    text: str
    element_id: str = ""


Block = Text | Omitted | Figure | Table | Heading


@dataclass
class Section:
    """One panel of the report: an anchor id, a title and its blocks."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
nav ul { columns: 3; }
section { border-top: 1px solid #ccc; margin-top: 2em; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; image-rendering: pixelated; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
.omitted { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5em; }
.note { color: #555; }
"""


def _figure(block: Figure, base: Path) -> str:
    data = (base / block.path).read_bytes()
    with Image.open(base / block.path) as image:
        width, height = image.size
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    ident = f' id="{html.escape(block.element_id)}"' if block.element_id else ""
    caption = (f"<figcaption>{html.escape(block.caption)}</figcaption>"
               if block.caption else "")
    # data-file names the PNG beside the report, for readers who want the file itself.
    return (f'<figure{ident}><img src="{uri}" width="{width}" height="{height}" '
            f'alt="{html.escape(block.alt)}" data-file="{html.escape(block.path.as_posix())}">'
            f"{caption}</figure>")


def _table(block: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in block.rows
    )
    caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _block(block: Block, base: Path) -> str:
    if isinstance(block, Text):
        cls = f' class="{html.escape(block.css_class)}"' if block.css_class else ""
        return f"<p{cls}>{html.escape(block.text)}</p>"
    if isinstance(block, Omitted):
        return (f'<p class="omitted" data-omitted="{html.escape(block.panel)}">'
                f"{html.escape(block.reason)}</p>")
    if isinstance(block, Figure):
        return _figure(block, base)
    if isinstance(block, Table):
        return _table(block)
    ident = f' id="{html.escape(block.element_id)}"' if block.element_id else ""
    return f"<h3{ident}>{html.escape(block.text)}</h3>"


def render(title: str, subtitle: str, sections: Sequence[Section], base: Path) -> str:
    """The whole page; figure paths are relative to ``base`` (the report directory)."""
    toc = "".join(
        f'<li><a href="#{html.escape(s.id)}">{html.escape(s.title)}</a></li>' for s in sections
    )
    body = "".join(
        f'<section id="{html.escape(s.id)}"><h2>{html.escape(s.title)}</h2>'
        + "".join(_block(b, base) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(subtitle)}</p>"
        f"<nav><ul>{toc}</ul></nav>{body}</body></html>\n"
    )


def write_page(path: Path, title: str, subtitle: str, sections: Sequence[Section]) -> Path:
    """Render and write atomically (a reader never sees half a page); return ``path``."""
    return write_text_atomic(path, render(title, subtitle, sections, path.parent))
