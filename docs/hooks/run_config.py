"""MkDocs hook: the run-config reference, generated from the option declarations.

Every key of :data:`fedmask.config.OPTIONS` (the common options and each method's
own, :mod:`fedmask.methods`) becomes a row: its default from ``pyproject.toml``
(which must equal the declared one), what is allowed and its meaning, both
from the declaration. A page holding the marker gets the table in its place.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from fedmask.config import OPTIONS

MARKER = "<!-- run-config-table -->"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def run_config_table() -> str:
    """The Markdown table of every run-config key, in declaration order."""
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, option in OPTIONS.items():
        if app.get(key) != option.default:
            raise ValueError(f"{key}: pyproject.toml says {app.get(key)!r}, "
                             f"the declaration {option.default!r}")
        rows.append(f"| `{key}` | {_default(app[key])} | {_cell(option.rule)} | "
                    f"{_cell(option.help)} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the table where a page has the marker."""
    return markdown.replace(MARKER, run_config_table()) if MARKER in markdown else markdown
