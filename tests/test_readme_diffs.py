"""The README's diffs, applied as written to the example's plain-Flower twin
(examples/quickstart-fedmask/flower_original), give the example project exactly,
and their headings count them: they cannot drift from the code that runs."""

import re

import pytest

from quickstart_twin import EXAMPLE, FILES, apply_diff, readme_diff, switched


@pytest.mark.parametrize("heading", list(FILES))
def test_the_readme_diff_turns_the_twin_into_the_example(heading):
    assert switched(heading) == (EXAMPLE / FILES[heading][1]).read_text()


@pytest.mark.parametrize("heading", list(FILES))
def test_the_readme_diff_headings_count_its_lines(heading):
    counts, diff = readme_diff(heading)
    lines = [line for line in diff.splitlines() if line[1:].strip()]
    added = sum(line.startswith("+") for line in lines)
    removed = sum(line.startswith("-") for line in lines)
    said = re.fullmatch(r"\((\d+) lines added(?:, (\d+) removed, blank lines aside)?\)", counts)
    assert said, counts
    assert (added, removed) == (int(said.group(1)), int(said.group(2) or 0))
    assert max(added, removed) <= 12  # a change a user makes by hand


def test_a_hunk_that_does_not_match_is_refused():
    with pytest.raises(ValueError, match="does not apply"):
        apply_diff(" a\n-b\n+c\n", "a\nx\n")
    assert apply_diff(" a\n-b\n+c\n ...\n d\n+e\n", "a\nb\nd\n") == "a\nc\nd\ne\n"
