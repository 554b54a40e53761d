"""MkDocs hook: the site's home page is the repository's README (its links into
``docs/`` made relative to the site), so the front page exists once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- readme -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the README where a page has the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, README.read_text().replace("](docs/", "]("))
