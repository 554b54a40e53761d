"""Test helper: ``flwr run`` the app on a launcher-managed SuperLink, read results.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from fedmask.launch import flwr_run_command

ROOT = Path(__file__).resolve().parents[1]


def flwr_run(env: dict[str, str], run_config: dict[str, Any], num_supernodes: int,
             app: Path = ROOT, timeout: float = 600) -> dict[str, Any]:
    """Run the app with `run_config` (must name out-dir); return its results.json."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    cmd = flwr_run_command(app, overrides, num_supernodes, 1)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    results = Path(run_config["out-dir"]) / "results.json"
    if done.returncode != 0 or not results.exists():
        raise AssertionError(f"flwr run failed ({done.returncode}):\n"
                             f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
    return json.loads(results.read_text())
