"""The report page: escaped text, embedded figures, visible notes for left-out panels."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from training.report.html import Figure, Heading, Omitted, Section, Table, Text, write_page
from training.report.tiles import save_png


def test_page_escapes_and_embeds(tmp_path: Path) -> None:
    png = save_png(np.zeros((3, 5, 3), np.uint8), tmp_path / "figures" / "x.png")
    sections = [
        Section("one", "First <panel>", [
            Text("a < b & c"),
            Figure(Path("figures/x.png"), 'alt "quoted"', "caption", element_id="fig-x"),
            Table(["k", "v"], [["<k>", "1"]], caption="cap"),
            Heading("sub", element_id="sub-1"),
        ]),
        Section("two", "Second", [Omitted("two", "Left out: no labels.")]),
    ]
    page = write_page(tmp_path / "report.html", "T & t", "sub", sections).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<h2>First &lt;panel&gt;</h2>" in page and "a &lt; b &amp; c" in page
    assert "<td>&lt;k&gt;</td>" in page and '<h3 id="sub-1">sub</h3>' in page
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert f'<img src="{uri}" width="5" height="3" alt="alt &quot;quoted&quot;"' in page
    assert 'data-file="figures/x.png"' in page and '<figure id="fig-x">' in page
    assert '<p class="omitted" data-omitted="two">Left out: no labels.</p>' in page
    assert '<a href="#one">' in page and '<section id="two">' in page
    assert not (tmp_path / "report.html.tmp").exists()
