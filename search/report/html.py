"""The report's Markdown as one self-contained HTML page (images embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
          "table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}"
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}"
          "code{background:#f4f4f4;padding:0 3px}img{max-width:100%}figure{margin:1em 0}"
          "figcaption{font-size:0.85em;color:#555}")
_IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", re.MULTILINE)


def _embed_images(markdown: str, image_dir: Path) -> str:
    """Replace each image line by a captioned figure whose PNG is inlined, so the page travels as one file."""

    def figure(match: re.Match[str]) -> str:
        alt = html.escape(match.group(1))
        data = base64.b64encode((image_dir / match.group(2)).read_bytes()).decode("ascii")
        return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>\n'

    return _IMAGE_LINE.sub(figure, markdown)


def markdown_to_html(markdown: str, image_dir: Path, title: str) -> str:
    """CommonMark with GitHub tables (markdown-it-py), as one page; images are read from ``image_dir``."""
    # html=True lets the embedded figures through; the Markdown itself is written by the report, not by users.
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    body = renderer.render(_embed_images(markdown, image_dir))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")
