"""Did a Flower run succeed? ``python -m fedmask.run_status [RUN_ID] [--superlink NAME]``.

``flwr run --stream`` exits 0 even when the ServerApp raised (Flower 1.41 only
prints ``Exit Code: 700``), so a script or CI job cannot tell a failed run from
a good one by its exit code. This asks the SuperLink (``flwr ls --format json``,
the same connection ``flwr run`` used) for the run's status and prints it with
Flower's details; it exits 0 when the run completed, 1 when it failed or was
stopped, 3 while it has not finished, 2 when the run or the SuperLink cannot be
read. Without RUN_ID it reports the run started last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FLWR = Path(sys.executable).parent / "flwr"
EXIT_CODES = {"finished:completed": 0, "finished:failed": 1, "finished:stopped": 1}
NOT_FINISHED, UNREADABLE = 3, 2


class RunStatusError(RuntimeError):
    """The SuperLink could not be asked, or it does not know the run."""


def list_runs(superlink: str | None = None, run_id: int | None = None) -> list[dict[str, Any]]:
    """The runs ``flwr ls --format json`` lists (one when `run_id` is given)."""
    cmd = [str(FLWR), "ls", *([superlink] if superlink else []), "--format", "json",
           *(["--run-id", str(run_id)] if run_id is not None else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise RunStatusError(f"flwr ls gave no JSON ({done.returncode}): "
                             f"{(done.stdout + done.stderr)[-500:]}") from err
    if not answer.get("success", False):
        raise RunStatusError(f"flwr ls: {answer.get('error-message', answer)}")
    return list(answer["runs"])


def latest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run that was submitted last."""
    if not runs:
        raise RunStatusError("the SuperLink has no runs")
    return max(runs, key=lambda run: run["pending-at"])


def exit_code(run: dict[str, Any]) -> int:
    """0 for a completed run, 1 for a failed or stopped one, 3 while unfinished."""
    return EXIT_CODES.get(run["status"], NOT_FINISHED)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the run's status and details; its exit code."""
    parser = argparse.ArgumentParser(prog="python -m fedmask.run_status",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", type=int, nargs="?", help="default: the run started last")
    parser.add_argument("--superlink", help="SuperLink connection name (default: flwr's)")
    args = parser.parse_args(argv)
    try:
        runs = list_runs(args.superlink, args.run_id)
        run = latest(runs)
    except RunStatusError as err:
        print(f"error: {err}", file=sys.stderr)
        return UNREADABLE
    details = f": {run['status-details']}" if run.get("status-details") else ""
    print(f"run {run['run-id']} ({run['fab-name']}): {run['status']}{details}")
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
