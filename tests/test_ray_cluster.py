"""A simulation on a two-host Ray cluster (docs/deployment/index.md, "Ray cluster").

Two hosts of a lab network (deploy/lab.py: network namespaces joined by a bridge):
a Ray head on one (10.77.0.1), a second Ray node on the other (10.77.0.2), each
with one CPU, its own temp dir and ports, started with ``ray start --block`` and
stopped by PID. The simulation SuperLink runs on the head's host with
``RAY_ADDRESS=10.77.0.1:6379``, so Flower's Ray backend joins the cluster; a
probe app (`flwr run`, 2 simulated nodes, 1 CPU each, 3 rounds) answers every
query with the network namespace and the Ray node its ClientApp ran in.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedmask.launch import (
    BIN,
    flower_env,
    flwr_run_command,
    in_netns,
    overrides,
    run_and_read,
    simulation_superlink,
    staged_app,
)

from conftest import ROOT, netns_inode

sys.path.insert(0, str(ROOT / "deploy"))
import lab  # noqa: E402 - deploy/lab.py
import local  # noqa: E402 - deploy/local.py

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(lab.unavailable() is not None,
                                 reason=str(lab.unavailable()))]

RAY_PORT = 6379
ROUNDS = 3

PROBE_SERVER = """
import json
import time
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    \"\"\"Query all `nodes` nodes `rounds` times; write the replies' host records.\"\"\"
    while len(nodes := list(grid.get_node_ids())) < int(context.run_config["nodes"]):
        time.sleep(0.5)
    hosts = []
    for _ in range(int(context.run_config["rounds"])):
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                   for node in nodes]
        hosts += [dict(reply.content.config_records["host"])
                  for reply in grid.send_and_receive(queries)]
    (Path(context.run_config["out-dir"]) / "results.json").write_text(json.dumps(hosts))
"""

PROBE_CLIENT = """
import os
import time

import ray
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    \"\"\"Where this ClientApp runs: its network namespace and Ray node.\"\"\"
    time.sleep(1.0)  # the other node's query finds this actor busy
    host = ConfigRecord({"netns": os.stat("/proc/self/ns/net").st_ino,
                         "ray-node": ray.get_runtime_context().get_node_id(),
                         "partition": int(context.node_config["partition-id"])})
    return Message(RecordDict({"host": host}), reply_to=msg)
"""

PROBE_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rayprobe"
version = "0.1.0"
dependencies = ["flwr[simulation]>=1.41,<1.42"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmask-tests"

[tool.flwr.app.components]
serverapp = "probe_server:app"
clientapp = "probe_client:app"

[tool.flwr.app.config]
nodes = 1
rounds = 1
out-dir = ""
"""


def _probe_app(folder: Path) -> Path:
    folder.mkdir()
    (folder / "probe_server.py").write_text(PROBE_SERVER)
    (folder / "probe_client.py").write_text(PROBE_CLIENT)
    (folder / "pyproject.toml").write_text(PROBE_PYPROJECT)
    return folder


def _ray_env(home: Path) -> dict[str, str]:
    """flower_env, but Ray in cluster mode and no RAY_ADDRESS (`ray start` names it)."""
    env = flower_env(home)
    env.pop("RAY_ADDRESS")
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_USAGE_STATS_ENABLED="0")
    return env


def _ray_start(state: Path, net: lab.Network, host: str, temp: Path) -> None:
    """``ray start --block`` on `host` (the head on the SuperLink's host), 1 CPU."""
    head = net.address("superlink")
    role = (["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"]
            if host == "superlink" else ["--address", f"{head}:{RAY_PORT}"])
    cmd = [str(BIN / "ray"), "start", "--block", *role, "--node-ip-address", net.address(host),
           "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20),
           "--temp-dir", str(temp / host), "--disable-usage-stats"]
    local.start(state, f"ray-{host}", in_netns(net.netns(host), cmd), _ray_env(temp / "home"),
                state / f"ray-{host}.log")


def _wait_for_nodes(net: lab.Network, count: int, env: dict[str, str], timeout: float) -> None:
    """Wait until ``ray status`` lists `count` active nodes."""
    address = f"{net.address('superlink')}:{RAY_PORT}"
    cmd = in_netns(net.netns("superlink"), [str(BIN / "ray"), "status", "--address", address])
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        active = done.stdout.split("Pending:")[0]
        if len(re.findall(r"^\s*\d+ node_", active, re.MULTILINE)) >= count:
            return
        assert time.monotonic() < deadline, f"Ray cluster not up:\n{done.stdout}{done.stderr}"
        time.sleep(2)


def test_clientapps_run_on_both_hosts_of_a_ray_cluster(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="fmray-"))  # short: Ray's socket paths
    out = tmp_path / "out"
    out.mkdir()
    try:
        with lab.network({0: {}}, tmp_path) as net:
            try:
                for host in net.hosts:
                    _ray_start(tmp_path, net, host, temp)
                _wait_for_nodes(net, 2, _ray_env(temp / "home"), 180)
                with simulation_superlink(
                        tmp_path / "flwr", net.netns("superlink"),
                        f"{net.address('superlink')}:{RAY_PORT}") as env, \
                        staged_app(_probe_app(tmp_path / "probe")) as app:
                    cmd = flwr_run_command(app, [overrides({"nodes": 2, "rounds": ROUNDS,
                                                            "out-dir": str(out)})], 2, 1)
                    run_and_read(in_netns(net.netns("superlink"), cmd), env, out, 300)
            finally:
                assert local.down(tmp_path, grace_s=5) == 0  # Ray: no state to save
            hosts = {netns_inode(net.netns(h)): h for h in net.hosts}
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    replies = json.loads((out / "results.json").read_text())
    assert len(replies) == 2 * ROUNDS
    assert {hosts.get(r["netns"], "elsewhere") for r in replies} == set(net.hosts)
    assert len({r["ray-node"] for r in replies}) == 2
