"""Faults of a real deployment (`deploy/local.sh`: TLS SuperLink with SuperNode
authentication, 2 SuperNodes on 127.0.0.1, node 1 computing as a CPU without AVX2),
injected while a run is in progress:

- first, no fault: node 1 (torch's ``default`` code path) trains HideNseek with node
  0, and the model file loads under that code path too;
- a ClientApp that hangs past `round-timeout-s` (alive, its heartbeat going on: a
  ClientApp that stops altogether is restarted by the SuperNode): just before the
  message's deadline it answers with an error (`fedmask.client.deadline`), the
  round ends with the node failed, and the node answers the next round;
- a SuperNode killed (SIGKILL) mid-run and restarted (`local.sh restart node-1`):
  the round completes without it, the node rejoins, the first round that samples it
  finds the masks it held gone (its reply: a stale-state error) and the next sends
  them again: it trains again.

The SuperLink killed and restarted, and the resumed run's final state, are
test_lab.py's (the SuperLink's host restarted in the network lab).

`down` stops every process the deployment started, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedmask.client.deadline import margin_s
from fedmask.server.app import MODEL_FILE

from conftest import (
    DEPLOY,
    FAULT,
    ROOT,
    TIMEOUT_S,
    checkpoint_round,
    clientapps,
    deployed,
    deployment_state,
    finish_run,
    start_run,
    trained,
    wait_for,
)

NODES = 2


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployed(tmp_path_factory.mktemp("faults"), NODES,
                  ("1:ATEN_CPU_CAPABILITY=default",)) as state:
        yield state


def test_a_node_without_avx2_trains_hidenseek_and_loads_its_model_file(deployment, tmp_path):
    assert deployment_state(deployment)["nodes"][1]["env"] == {"ATEN_CPU_CAPABILITY": "default"}
    # no fault here: a deadline that the slower code path meets on a busy machine
    config = {**FAULT, "num-server-rounds": 1, "round-timeout-s": 3 * TIMEOUT_S}
    results = finish_run(start_run(deployment, tmp_path, config), tmp_path)
    assert [(r["round"], r["num_clients"], r["failed_clients"], r["rejected_clients"])
            for r in results["rounds"]] == [(1, NODES, [], [])]
    load = ("import sys, torch; from fedmask.nn.model_file import load_model; "
            "load_model(sys.argv[1]); print(torch.backends.cpu.get_cpu_capability())")
    done = subprocess.run([sys.executable, "-c", load, str(tmp_path / MODEL_FILE)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "DEFAULT"


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
    node = deployment_state(deployment)["nodes"][1]
    out = tmp_path / "out"
    results = finish_run(start_run(deployment, out, {**FAULT, "num-server-rounds": 2},
                                 _hanging_app(tmp_path / "app")), out)
    first, second = results["rounds"]
    assert [str(n) for n in first["failed_clients"]] == [node["node_id"]]
    assert first["wall_s"] >= TIMEOUT_S - margin_s(TIMEOUT_S)
    assert first["num_clients"] == NODES - 1
    assert first["aggregated"] and second["aggregated"]
    assert trained(second, node["node_id"])  # the node answers the next round


def test_a_killed_supernode_rejoins_and_trains_again(deployment, tmp_path):
    node = deployment_state(deployment)["nodes"][1]
    # round 2 fails it when its heartbeat expires, and it is back within seconds: the
    # first round to sample it (3, or 4 if it was back after round 3 began) finds its
    # state gone, and the next sends the masks again (by round 5)
    run = start_run(deployment, tmp_path, {**FAULT, "num-server-rounds": 5})
    try:
        wait_for(lambda: checkpoint_round(tmp_path) >= 1, 300, "round 1")
        wait_for(lambda: clientapps(node["pid"]), 300, "node-1 training in round 2")
        os.killpg(node["pid"], signal.SIGKILL)  # the SuperNode, its SuperExec, its ClientApp
        restart = subprocess.run([DEPLOY, "restart", "node-1", "--state-dir", str(deployment)],
                                 capture_output=True, text=True, timeout=300)
        assert restart.returncode == 0, restart.stderr[-3000:]
        results = finish_run(run, tmp_path)
    finally:
        run.kill()
    rounds = results["rounds"]
    assert trained(rounds[0], node["node_id"])
    assert node["node_id"] in [str(n) for n in rounds[1]["failed_clients"]]
    assert all(r["aggregated"] for r in rounds)  # node-0 carried the rounds it missed
    back = [r for r in rounds[2:] if trained(r, node["node_id"])]
    assert back, "node-1 never trained again"
    assert sum(r["down_resent_bytes"] for r in rounds[1:]) > 0  # P sent to it again
