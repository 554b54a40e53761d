"""A project in Flower's quickstart layout switched to fedmask as the README says:
its diffs applied, as written, to the example's plain-Flower twin
(examples/quickstart-fedmask/flower_original)."""

import re
import shutil
from pathlib import Path

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "quickstart-fedmask"
TWIN = EXAMPLE / "flower_original"
# README heading -> (the twin's file, the example's file)
FILES = {"Server side": ("server_app.py", "quickstart_fedmask/server_app.py"),
         "`pyproject.toml`": ("pyproject.toml", "pyproject.toml"),
         "Client side": ("client_app.py", "quickstart_fedmask/client_app.py")}


def readme_diff(heading: str) -> tuple[str, str]:
    """The README's ``### <heading> (...)`` line and the ```diff block under it."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"^### {re.escape(heading)} (\(.*?\))\n.*?```diff\n(.*?)```", text,
                      re.S | re.M)
    assert found, f"README: no '### {heading} (...)' section with a diff"
    return found.group(1), found.group(2)


def apply_diff(diff: str, text: str) -> str:
    """`text` with `diff` applied: hunks separated by `` ...`` lines, each found (its
    context and removed lines, in order) after the previous one."""
    lines, out, cursor = text.splitlines(), [], 0
    for hunk in re.split(r"^ \.\.\.\n", diff, flags=re.M):
        body = hunk.splitlines()
        old = [line[1:] for line in body if line[:1] in (" ", "-", "")]
        new = [line[1:] for line in body if line[:1] in (" ", "+", "")]
        at = next((i for i in range(cursor, len(lines) - len(old) + 1)
                   if lines[i:i + len(old)] == old), None)
        if at is None:
            raise ValueError(f"this hunk does not apply:\n{hunk}")
        out += lines[cursor:at] + new
        cursor = at + len(old)
    return "\n".join(out + lines[cursor:]) + "\n"


def switched(heading: str) -> str:
    """The twin's file for `heading` with the README's diff applied."""
    twin_file, _ = FILES[heading]
    return apply_diff(readme_diff(heading)[1], (TWIN / twin_file).read_text())


def switched_project(dest: Path) -> Path:
    """A copy of the example at `dest` whose switched files are the twin's with the
    README's diffs applied (the rest, the project's own task.py, as it is)."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("flower_original",
                                                                 "__pycache__"))
    for heading, (_, example_file) in FILES.items():
        (dest / example_file).write_text(switched(heading))
    return dest
