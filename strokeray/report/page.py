"""One self-contained HTML page from sections of text, tables and PNG figures: images are embedded
as data URIs, the style is inline, there is no script, so the file opens anywhere on its own."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }
.scroll { overflow-x: auto; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; max-width: 520px; }
.missing { color: #a33; }
.note { color: #555; font-size: .9em; }
"""


@dataclass
class Figure:
    name: str  # file stem under figures/
    png: bytes
    caption: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list]
    text_columns: int = 1  # left-aligned leading columns


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, escaped on output
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    missing: str | None = None  # why the section has nothing to show (a stage not run)


def cell(value) -> str:
    """A table cell's text: floats to 3 decimals, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def _table(t: Table) -> str:
    def cls(i: int) -> str:
        return ' class="text"' if i < t.text_columns else ""

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(t.headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{html.escape(cell(v))}</td>" for i, v in enumerate(r)) + "</tr>" for r in t.rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    alt = html.escape(f.caption, quote=True)
    return (
        f'<figure id="fig-{html.escape(f.name, quote=True)}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
    )


def render_page(title: str, intro: list[str], sections: list[Section]) -> str:
    """The page as HTML text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
    parts.append(
        "<nav><ul>"
        + "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
        + "</ul></nav>"
    )
    for i, s in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>')
        if s.missing:
            parts.append(f'<p class="missing">{html.escape(s.missing)}</p>')
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [_table(t) for t in s.tables]
        parts += [_figure(f) for f in s.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
