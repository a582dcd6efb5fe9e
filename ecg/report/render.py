"""Render a report Document as Markdown (with PNGs beside it) and as one self-contained HTML file
(PNGs embedded as data URIs, so it opens from disk, by mail, with no server)."""

from __future__ import annotations

import base64
import html
import re
from importlib import resources

import jinja2

from ecg.report.document import Document, Heading, Image, Note, Paragraph, Table


def markdown(doc: Document) -> str:
    out: list[str] = []
    for block in doc.blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Paragraph):
            out.append(f"{block.text}\n")
        elif isinstance(block, Note):
            out.append(f"> **Note.** {block.text}\n")
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({block.path.name})\n")
        elif isinstance(block, Table):
            out.append(markdown_table(block))
    return "\n".join(out)


def markdown_table(table: Table) -> str:
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(table.header), row(["---"] * len(table.header))]
    lines += [row(r) for r in table.rows]
    if table.caption:
        lines.append(f"\n*{table.caption}*")
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escape, then honour the one piece of Markdown the document uses: **bold**."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def html_page(doc: Document) -> str:
    blocks = []
    for block in doc.blocks:
        if isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            blocks.append(
                {"kind": "image", "src": f"data:image/png;base64,{data}", "caption": block.caption}
            )
        elif isinstance(block, Table):
            blocks.append(
                {
                    "kind": "table",
                    "header": [_inline(h) for h in block.header],
                    "rows": [[_inline(str(c)) for c in r] for r in block.rows],
                    "caption": block.caption,
                }
            )
        elif isinstance(block, Heading):
            blocks.append({"kind": "heading", "level": block.level, "text": block.text})
        else:
            blocks.append(
                {
                    "kind": "note" if isinstance(block, Note) else "paragraph",
                    "text": _inline(block.text),
                }
            )
    template = (resources.files("ecg.report") / "templates" / "report.html.j2").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(title=doc.title, blocks=blocks)
