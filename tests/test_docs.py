"""The documentation cannot drift from the code: the run-config reference is
generated from the option declarations, every declared key has a description,
and a key the docs set is a declared one."""

import re
import sys
import tomllib

import pytest

from fedmask.config import OPTIONS

from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "hooks"))
import run_config  # noqa: E402 - docs/hooks/run_config.py, the MkDocs hook

# Keys the docs may set that are not fedmask's run config: Flower's federation
# settings, and the example project's own run config.
FEDERATION = {"num-supernodes", "client-resources-num-cpus", "client-resources-num-gpus",
              "init-args-num-cpus", "init-args-num-gpus"}
EXAMPLE = set(tomllib.loads((ROOT / "examples" / "quickstart-fedmask" / "pyproject.toml")
                            .read_text())["tool"]["flwr"]["app"]["config"])
SETTING = re.compile(r"(?<![\w-])([a-z][a-z0-9]*(?:-[a-z0-9]+)+) ?= ?[\"'\d\[tf]")


def documents() -> list:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("key", list(OPTIONS))
def test_every_declared_key_is_described(key):
    assert len(OPTIONS[key].help) >= 10, f"{key}: no description in its declaration"
    assert OPTIONS[key].rule, f"{key}: no rule for what is allowed"


def test_the_reference_table_has_a_row_per_declared_key_with_pyprojects_default():
    rows = run_config.run_config_table().splitlines()[2:]
    assert [re.match(r"\| `([^`]+)`", row).group(1) for row in rows] == list(OPTIONS)


def test_every_key_the_docs_set_is_declared():
    undeclared = {}
    for path in documents():
        for code in re.findall(r"`([^`\n]+)`|```\w*\n(.*?)```", path.read_text(), re.S):
            for key in SETTING.findall(code[0] or code[1]):
                if key not in OPTIONS and key not in FEDERATION | EXAMPLE:
                    undeclared.setdefault(key, path.name)
    assert undeclared == {}


def test_a_page_with_the_marker_gets_the_table():
    page = f"# Run configuration\n\n{run_config.MARKER}\n"
    assert run_config.on_page_markdown(page).count("\n| `") == len(OPTIONS)
