"""The README's diffs are the diff between the example project and its plain-Flower
twin (examples/quickstart-fedmask/flower_original), line for line, and their
headings count them: they cannot drift from the code that runs."""

import difflib
import re

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "quickstart-fedmask"


def readme_diff(side: str) -> tuple[int, int, list[str], list[str]]:
    """The README's ``### <side> side (A lines added, R removed, ...)`` block: the
    counts in its heading and its removed and added lines (blank ones aside)."""
    text = (ROOT / "README.md").read_text()
    heading = re.search(rf"### {side} side \((\d+) lines added, (\d+) removed, blank lines "
                        rf"aside\)\n(.*?)```diff\n(.*?)```", text, re.S)
    assert heading, f"README: no '### {side} side (...)' diff"
    lines = heading.group(4).splitlines()
    removed = [line[1:] for line in lines if line.startswith("-") and line[1:].strip()]
    added = [line[1:] for line in lines if line.startswith("+") and line[1:].strip()]
    return int(heading.group(1)), int(heading.group(2)), removed, added


def actual_diff(name: str) -> tuple[list[str], list[str]]:
    """Removed and added lines (blank ones aside) from the plain twin's `name` to the
    example's."""
    plain = (EXAMPLE / "flower_original" / name).read_text().splitlines()
    ours = (EXAMPLE / "quickstart_fedmask" / name).read_text().splitlines()
    delta = list(difflib.ndiff(plain, ours))
    return ([d[2:] for d in delta if d.startswith("- ") and d[2:].strip()],
            [d[2:] for d in delta if d.startswith("+ ") and d[2:].strip()])


@pytest.mark.parametrize("side, name", [("Server", "server_app.py"),
                                        ("Client", "client_app.py")])
def test_the_readme_diff_is_the_examples_diff(side, name):
    added_count, removed_count, removed, added = readme_diff(side)
    want_removed, want_added = actual_diff(name)
    assert removed == want_removed
    assert added == want_added
    assert (added_count, removed_count) == (len(added), len(removed))
    assert max(len(added), len(removed)) <= 12  # a change a user makes by hand
