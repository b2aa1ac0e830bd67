"""One static HTML page showing a report's figures and tables: relative links, inline CSS, no scripts."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from .tables import Table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; display: block; }
.caption { color: #555; font-size: .9em; } .notes li { color: #8a4b00; }
.files a { margin-right: 1em; } table.text td { text-align: left; }
"""


@dataclass
class Section:
    """A titled part of the page: figures (relative PNG paths), tables, and file links (relative paths)."""

    title: str
    text: str = ""
    images: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    files: list = field(default_factory=list)


def _cell(value) -> str:
    text = escape(str(value))
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def table_html(table: Table) -> str:
    """A Table as an HTML table with its caption (Markdown bold '**x**' rendered bold)."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.cells)
    caption = f'<p class="caption">{escape(table.caption)}</p>' if table.caption else ""
    kind = ' class="text"' if table.text else ""
    return f"<h3>{escape(table.title)}</h3>{caption}<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_page(title: str, sections: Sequence[Section], notes: Sequence[str] = (), intro: str = "") -> str:
    """The whole page as a string."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"]
    if intro:
        parts.append(f"<p>{escape(intro)}</p>")
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    for section in sections:
        parts.append(f"<h2>{escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{escape(section.text)}</p>")
        for src, alt in section.images:
            parts.append(f'<img src="{escape(src, quote=True)}" alt="{escape(alt, quote=True)}">')
        parts.extend(table_html(t) for t in section.tables)
        if section.files:
            links = "".join(f'<a href="{escape(f, quote=True)}">{escape(f)}</a>' for f in section.files)
            parts.append(f'<p class="files">Files: {links}</p>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
