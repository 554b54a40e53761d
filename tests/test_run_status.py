"""Telling a failed Flower run from a good one: ``flwr run --stream`` exits 0 when
the ServerApp raises; ``python -m fedmask.run_status`` reads the run's status."""

import re
import subprocess
import sys

import pytest

from fedmask import run_status
from fedmask.launch import flwr_run_command, staged_app

from quickstart_twin import switched_project


@pytest.mark.parametrize("status, code", [("finished:completed", 0), ("finished:failed", 1),
                                          ("finished:stopped", 1), ("running", 3),
                                          ("pending", 3)])
def test_exit_code_per_status(status, code):
    assert run_status.exit_code({"status": status}) == code


def test_the_latest_run_is_the_one_submitted_last():
    runs = [{"run-id": "1", "pending-at": "2026-12-03 10:00:02Z"},
            {"run-id": "2", "pending-at": "2026-12-03 10:00:09Z"},
            {"run-id": "3", "pending-at": "2026-12-03 09:59:59Z"}]
    assert run_status.latest(runs)["run-id"] == "2"
    with pytest.raises(run_status.RunStatusError, match="no runs"):
        run_status.latest([])


@pytest.mark.integration
def test_a_failed_run_in_a_users_project_exits_non_zero_with_its_reason(superlink, tmp_path):
    project = switched_project(tmp_path / "project")
    with staged_app(project) as app:
        cmd = flwr_run_command(app, ["strategy='nope' out-dir=''"], 2, 1)
        run = subprocess.run(cmd, env=superlink, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "Exit Code: 700" in run.stdout  # Flower 1.41's behaviour
    run_id = re.search(r"Successfully started run (\d+)", run.stdout).group(1)
    for args in ([], [run_id]):  # the latest run, and that run by its id
        status = subprocess.run([sys.executable, "-m", "fedmask.run_status", *args],
                                env=superlink, capture_output=True, text=True, timeout=120)
        print(status.stdout, status.stderr)
        assert status.returncode == 1
        assert f"run {run_id} (quickstart-fedmask): finished:failed" in status.stdout
        assert "unknown method 'nope'" in status.stdout
    missing = subprocess.run([sys.executable, "-m", "fedmask.run_status", "12345"],
                             env=superlink, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "error: flwr ls" in missing.stderr, missing.stderr
