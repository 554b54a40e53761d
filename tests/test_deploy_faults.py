"""Faults of a real deployment (`deploy/local.sh`: TLS SuperLink with SuperNode
authentication, 2 SuperNodes on 127.0.0.1), injected while a run is in progress:

- a ClientApp that hangs past `round-timeout-s` (alive, its heartbeat going on: a
  ClientApp that stops altogether is restarted by the SuperNode): just before the
  message's deadline it answers with an error (`fedmask.client.deadline`), the
  round ends with the node failed, and the node answers the next round;
- a SuperNode killed (SIGKILL) mid-run and restarted (`local.sh restart node-1`):
  the round completes without it, the node rejoins, gets the masks again and
  trains in a later round;
- the SuperLink killed (SIGKILL) and restarted (`local.sh restart superlink`): the
  run resumed with `resume=true` ends with the same final global state as an
  uninterrupted run.

`down` stops every process the deployment started, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loopback import run_federation

from fedmask.client.deadline import margin_s
from fedmask.launch import overrides
from fedmask.server.checkpoint import CHECKPOINT, load

from conftest import DEPLOY, ROOT, SMALL, deployed

NODES = 2
TIMEOUT_S = 40.0
FAULT = {**SMALL, "method": "hidenseek", "fraction-evaluate": 0.0, "min-nodes": 1,
         "round-timeout-s": TIMEOUT_S}
T = TypeVar("T")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployed(tmp_path_factory.mktemp("faults"), NODES) as state:
        yield state


def _state(deployment: Path) -> dict[str, Any]:
    return json.loads((deployment / "state.json").read_text())


def _start_run(deployment: Path, out: Path, config: dict[str, Any],
               app: Path = ROOT) -> subprocess.Popen:
    """`local.sh run` of `app` in the background, its output in out/run.log."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "ab") as log:
        return subprocess.Popen([DEPLOY, "run", "--app", str(app), "--state-dir",
                                 str(deployment), "--run-config",
                                 overrides({**config, "out-dir": str(out)})],
                                stdout=log, stderr=subprocess.STDOUT)


def _finish(run: subprocess.Popen, out: Path, timeout: float = 600) -> dict[str, Any]:
    code = run.wait(timeout=timeout)
    assert code == 0, (out / "run.log").read_text()[-4000:]
    return json.loads((out / "results.json").read_text())


def _wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if entry.name.isdigit():
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(
                int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _clientapps(node_pid: int) -> list[int]:
    """The `flwr-clientapp` processes SuperNode `node_pid` runs now."""
    found = []
    for pid in _descendants(node_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-clientapp" in cmdline:
            found.append(pid)
    return found


def _checkpoint_round(out: Path) -> int:
    return load(out / CHECKPOINT).server_round if (out / CHECKPOINT).exists() else 0


def _trained(record: dict[str, Any], node_id: str) -> bool:
    return any(str(c["node_id"]) == node_id and not c["failed"] for c in record["clients"])


HANGING_CLIENT = """
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmask.client.deadline import answer_by_deadline
from fedmask.client.node import handle
from fedmask.wire.records import CONFIG, config_value

app = ClientApp(mods=[answer_by_deadline])


@app.train()
def train(msg: Message, context: Context) -> Message:
    \"\"\"fedmask's training, except on partition 1 in round 1: hangs, heartbeats going on.\"\"\"
    if (int(context.node_config["partition-id"]) == 1
            and config_value(msg.content.config_records[CONFIG], "server-round", int) == 1):
        time.sleep(3600)
    return handle(msg, context, "train")
"""


def _hanging_app(folder: Path) -> Path:
    """fedmask's app whose ClientApp hangs on one node in round 1."""
    folder.mkdir()
    (folder / "hanging_client_app.py").write_text(HANGING_CLIENT)
    (folder / "server_app.py").write_text((ROOT / "server_app.py").read_text())
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text().replace(
        'clientapp = "client_app:app"', 'clientapp = "hanging_client_app:app"'))
    return folder


def test_a_hanging_clientapp_fails_its_round_at_the_timeout(deployment, tmp_path):
    node = _state(deployment)["nodes"][1]
    out = tmp_path / "out"
    results = _finish(_start_run(deployment, out, {**FAULT, "num-server-rounds": 2},
                                 _hanging_app(tmp_path / "app")), out)
    first, second = results["rounds"]
    assert [str(n) for n in first["failed_clients"]] == [node["node_id"]]
    assert first["wall_s"] >= TIMEOUT_S - margin_s(TIMEOUT_S)
    assert first["num_clients"] == NODES - 1
    assert first["aggregated"] and second["aggregated"]
    assert _trained(second, node["node_id"])  # the node answers the next round


def test_a_killed_supernode_rejoins_and_trains_again(deployment, tmp_path):
    node = _state(deployment)["nodes"][1]
    run = _start_run(deployment, tmp_path, {**FAULT, "num-server-rounds": 7})
    try:
        _wait_for(lambda: _checkpoint_round(tmp_path) >= 1, 300, "round 1")
        _wait_for(lambda: _clientapps(node["pid"]), 300, "node-1 training in round 2")
        os.killpg(node["pid"], signal.SIGKILL)  # the SuperNode, its SuperExec, its ClientApp
        restart = subprocess.run([DEPLOY, "restart", "node-1", "--state-dir", str(deployment)],
                                 capture_output=True, text=True, timeout=300)
        assert restart.returncode == 0, restart.stderr[-3000:]
        results = _finish(run, tmp_path)
    finally:
        run.kill()
    rounds = results["rounds"]
    assert _trained(rounds[0], node["node_id"])
    assert node["node_id"] in [str(n) for n in rounds[1]["failed_clients"]]
    assert all(r["aggregated"] for r in rounds)  # node-0 carried the rounds it missed
    back = [r for r in rounds[2:] if _trained(r, node["node_id"])]
    assert back, "node-1 never trained again"
    assert sum(r["down_resent_bytes"] for r in rounds[1:]) > 0  # P sent to it again


def test_a_killed_superlink_restarts_and_the_run_resumes_to_the_same_state(deployment,
                                                                          tmp_path):
    config = {**FAULT, "num-server-rounds": 3}
    run = _start_run(deployment, tmp_path, config)
    try:
        _wait_for(lambda: _checkpoint_round(tmp_path) >= 1, 300, "round 1's checkpoint")
        os.kill(_state(deployment)["superlink_pid"], signal.SIGKILL)
        assert run.wait(timeout=300) != 0  # the interrupted run fails, non-zero
    finally:
        run.kill()
    assert _checkpoint_round(tmp_path) < 3
    restart = subprocess.run([DEPLOY, "restart", "superlink", "--state-dir", str(deployment)],
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    resumed = _finish(_start_run(deployment, tmp_path, {**config, "resume": True}), tmp_path)
    uninterrupted = run_federation({**config, "round-timeout-s": 3600.0}, NODES)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["final_arrays_sha256"] == uninterrupted["final_arrays_sha256"]
