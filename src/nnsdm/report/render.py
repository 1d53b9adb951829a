"""One report, two renderings: Markdown (figures linked as files) and a self-contained HTML page.

The report is a list of blocks (headings, paragraphs, tables, figures). The HTML page embeds every
figure as a base64 PNG data URI and its CSS inline, so it opens anywhere without the report folder.
Paragraph text may use ``code`` spans; everything else is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # cells are shown as they are (already formatted strings)
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path  # relative to the report folder
    caption: str


Block = Heading | Paragraph | Table | Figure


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured Markdown; figures are linked by their path relative to the report folder."""
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            if b.caption:
                out.append(f"*{b.caption}*")
            cols = [_md_cell(c) for c in b.frame.columns]
            lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b.frame.itertuples(index=False)]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path.as_posix()})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn Markdown's ``code`` and *emphasis* spans into HTML."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", text)


_NUMBER = re.compile(r"^[-+−]?[\d,.]+( ± [\d.]+)?$|^—$")


def _td(value) -> str:
    text = str(value)
    cls = ' class="num"' if _NUMBER.match(text) else ""
    return f"<td{cls}>{html.escape(text)}</td>"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.4em; font-size: 0.84em; }
th, td { border: 1px solid #ccc; padding: .3em .55em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
.scroll { overflow-x: auto; }
"""


def to_html(blocks: list[Block], *, root: Path, title: str) -> str:
    """A self-contained HTML page: inline CSS, figures read from ``root`` and embedded as data URIs."""
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b.frame.columns)
            rows = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>"
                           for row in b.frame.itertuples(index=False))
            caption = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
            body.append(f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(b, Figure):
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            alt = html.escape(b.caption, quote=True)
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
