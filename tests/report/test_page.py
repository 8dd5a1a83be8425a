"""The report page: self-contained, escaped, images embedded byte for byte."""

import base64
import re

from strokeray.report.page import Figure, Section, Table, cell, render_page


def test_page_embeds_figures_escapes_text_and_has_no_external_references():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    html = render_page(
        "t <1>",
        ["intro & more"],
        [
            Section(
                "A",
                paragraphs=["<script>alert(1)</script>"],
                tables=[Table(["k", "v"], [["x<y", 0.12345]])],
                figures=[Figure("f", png, 'caption "quoted"')],
            ),
            Section("B", missing="stage not run"),
        ],
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "x&lt;y" in html and "0.123" in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == png
    assert "stage not run" in html and 'href="#s1"' in html
    assert not re.search(r'(src|href)="(https?:|//|/)', html)  # nothing to fetch


def test_cells_format_numbers_and_missing_values():
    assert cell(float("nan")) == "–" and cell(None) == "–"
    assert cell(0.5) == "0.500" and cell(3) == "3" and cell(2.5e-5) == "2.5e-05"
