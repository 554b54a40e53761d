"""fedmask as a user installs it: ``python -m build`` makes a wheel and an sdist; the
wheel, installed (not editable) into a fresh virtual environment outside the
checkout, runs the example project through ``flwr run``.

The fresh environment gets the wheel alone (``--no-deps``); its dependencies
(torch, flwr, ...) are this environment's, reached through a path entry that
does not process this environment's ``.pth`` files, so the checkout's editable
install is invisible there. Flower's commands are written into its ``bin/``
as pip writes console scripts, so every Flower process runs its interpreter.
"""

import importlib.metadata
import json
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from quickstart_twin import switched_project

pytestmark = pytest.mark.integration


def build(out: Path) -> tuple[Path, Path]:
    """The wheel and the sdist ``python -m build`` writes to `out`."""
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return next(out.glob("fedmask-*.whl")), next(out.glob("fedmask-*.tar.gz"))


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A new venv at `path` with `wheel` installed and this environment's packages
    on its path; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=600)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    for entry in importlib.metadata.distribution("flwr").entry_points:
        if entry.group == "console_scripts":
            script = path / "bin" / entry.name
            script.write_text(f"#!{python}\nimport sys\nfrom {entry.module} import {entry.attr}\n"
                              f"sys.exit({entry.attr}())\n")
            script.chmod(0o755)
    return python


def test_the_wheel_and_sdist_hold_the_library_and_nothing_else(tmp_path):
    wheel, sdist = build(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fedmask/client/__init__.py" in names and "strategies/hidenseek.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/fedmask/nn/supermask.py") for m in members)


def test_the_installed_wheel_runs_the_example_through_flwr_run(tmp_path):
    wheel, _ = build(tmp_path / "dist")
    python = fresh_venv(tmp_path / "venv", wheel)
    where = subprocess.run([str(python), "-c", "import fedmask, strategies; "
                            "print(fedmask.__file__); print(strategies.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    site = str(tmp_path / "venv" / "lib")
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout
    project, out = switched_project(tmp_path / "project"), tmp_path / "out"
    run = subprocess.run(
        [str(python), "-m", "fedmask.launch", "--app", str(project), "--num-supernodes", "2",
         "--run-config", f"strategy='hidenseek' num-server-rounds=2 out-dir='{out}'"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["accuracy"] > 0.2
