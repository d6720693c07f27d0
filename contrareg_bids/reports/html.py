"""Self-contained HTML pages: inline CSS, reportlets inlined (SVG elements, HTML fragments),
no network access, so that a page opens from disk or from an e-mail attachment."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from pathlib import Path

from ..io.atomic import write_text_atomic

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fff; }
nav { position: sticky; top: 0; background: #2c3e50; padding: 6px 16px; z-index: 2; }
nav a { color: #ecf0f1; margin-right: 18px; text-decoration: none; font-size: 14px; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 20px 40px; }
h1 { font-size: 24px; } h2 { border-bottom: 2px solid #2c3e50; padding-bottom: 3px; }
h3 { font-size: 16px; margin-bottom: 4px; }
.reportlet { margin: 10px 0 24px; }
.reportlet svg { width: 100%; height: auto; display: block; }
.caption { color: #555; font-size: 13px; margin: 2px 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
table.metrics td { font-family: monospace; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 8px; overflow-x: auto;
      font-size: 12px; white-space: pre-wrap; }
.ok { color: #1a7f37; } .bad { color: #b42318; font-weight: bold; }
tr.outlier td { background: #fde8e7; }
table.sortable td:first-child { white-space: nowrap; }
table.sortable th { cursor: pointer; }
"""


def inline_svg(text: str) -> str:
    """An SVG file's markup without its XML declaration/DOCTYPE, ready to inline."""
    start = text.find("<svg")
    return text[start:] if start >= 0 else html.escape(text)


def page(title: str, sections: Iterable[tuple[str, str, str]], script: str = "") -> str:
    """A page with a navigation bar; ``sections`` are ``(anchor, heading, body html)``."""
    sections = list(sections)
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(
        f'<section id="{a}"><h2>{html.escape(h)}</h2>{b}</section>' for a, h, b in sections
    )
    js = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><nav>{nav}</nav><main><h1>{html.escape(title)}</h1>{body}</main>{js}"
        "</body></html>\n"
    )


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_page(path: Path, text: str) -> Path:
    """Write atomically (a browser may have the old page open)."""
    return write_text_atomic(path, text)
