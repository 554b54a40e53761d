"""The network lab (deploy/lab.py, `deploy/local.sh lab`): a real deployment whose
SuperLink and 2 SuperNodes each run on a host of their own (a network namespace),
linked through a bridge on the SuperLink's host with tbf limits per direction
(every node 4 mbit/s up and 16 mbit/s down, node 1 2 mbit/s up), HideNseek on
100 images a node with `round-timeout-s=60`:

- each process runs in its host's namespace; the SuperLink serves on its host's
  address, which the server certificate names;
- each link carries its own limits, both ways (timed transfers between hosts);
- node 1's link cut mid-round: at the round's deadline the node is failed and the
  round completes with node 0; the link restored, node 1 trains in the next run;
- the SuperLink's host restarted (its processes killed, its namespace and every
  link made anew, the SuperLink started on the same database): the interrupted
  run fails, and with `resume=true` it goes on from round 1's checkpoint, both
  nodes training round 2, to the final global state of an uninterrupted run;
- `lab up` that fails, or is interrupted, removes every host, link and process;
  a malformed `--link` is refused naming the option.
The session checks at its end that no namespace, link or process is left (conftest).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import run_federation

from fedmask.launch import in_netns

from conftest import (
    FAULT,
    LAB,
    ROOT,
    TIMEOUT_S,
    checkpoint_round,
    clientapps,
    cmdlines,
    deployed,
    deployment_state,
    finish_run,
    netns_and_links,
    netns_inode,
    start_run,
    trained,
    wait_for,
)

sys.path.insert(0, str(ROOT / "deploy"))
import lab  # noqa: E402 - deploy/lab.py
from local import online_nodes  # noqa: E402 - deploy/local.py

needs_lab = pytest.mark.skipif(lab.unavailable() is not None, reason=str(lab.unavailable()))
LINKS = ("up=4mbit,down=16mbit", "1:up=2mbit")
SIZE = 500_000  # bytes per timed transfer
LAB_FAULT = {**FAULT, "train-limit": 100, "test-limit": 200}  # FAULT on fewer images

RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
received, first = 0, None
while chunk := conn.recv(1 << 16):
    first = first or time.monotonic()
    received += len(chunk)
print(received, time.monotonic() - first, flush=True)
"""
SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as conn:
    conn.sendall(bytes(int(sys.argv[3])))
"""


@pytest.fixture(scope="module")
def lab_deployment(tmp_path_factory):
    with deployed(tmp_path_factory.mktemp("lab"), 2, links=LINKS) as state:
        yield state


def _transfer(net: lab.Network, src: str, dst: str) -> float:
    """Seconds SIZE bytes take from host `src` to host `dst` (first byte to last)."""
    receiver = subprocess.Popen(in_netns(net.netns(dst), [sys.executable, "-c", RECEIVER,
                                                          net.address(dst)]),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        subprocess.run(in_netns(net.netns(src), [sys.executable, "-c", SENDER, net.address(dst),
                                                 port, str(SIZE)]), check=True, timeout=60)
        received, seconds = receiver.stdout.readline().split()
    finally:
        receiver.kill()
        receiver.wait()
    assert int(received) == SIZE
    return float(seconds)


def _processes_of(state: Path) -> list[str]:
    """Command lines of live processes that name `state` (every process a deployment
    starts names its certificates, database or home there)."""
    return [line for line in cmdlines().values() if str(state) in line and "pytest" not in line]


def _assert_all_removed(state: Path, before: tuple[set[str], set[str]]) -> None:
    assert netns_and_links() == before
    assert not (state / lab.LAB).exists()
    assert not _processes_of(state)


def test_link_profiles_parse_and_later_items_win():
    links = lab.parse_links(["up=2mbit,down=10mbit", "1:down=500kbit", "0:up=1mbps"], 2)
    assert links == {0: {"up": 8_000_000, "down": 10_000_000},
                     1: {"up": 2_000_000, "down": 500_000}}
    assert lab.parse_links([], 1) == {0: {}}


@pytest.mark.parametrize("item", ["up=fast", "2:up=1mbit", "up=1mbit,left=2mbit",
                                  "up=1mbit,up=2mbit", "", "x:down=1mbit", "up=0mbit"])
def test_a_malformed_link_is_refused_naming_the_option(item):
    with pytest.raises(ValueError, match=r"--link: .*\[I:\]up=RATE,down=RATE.*I in 0\.\.1"):
        lab.parse_links([item], 2)


def test_the_cli_refuses_a_malformed_link_before_anything_starts(tmp_path):
    done = subprocess.run([*LAB, "up", "--link", "up=2mbits", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--link: 'up=2mbits' is not [I:]up=RATE,down=RATE" in done.stderr
    assert not (tmp_path / lab.LAB).exists()


@pytest.mark.integration
@needs_lab
def test_each_process_runs_on_its_own_host(lab_deployment):
    state, net = deployment_state(lab_deployment), lab.load(lab_deployment)
    assert net is not None
    assert netns_inode(state["superlink_pid"]) == netns_inode(net.netns("superlink"))
    for i, node in enumerate(state["nodes"]):
        assert netns_inode(node["pid"]) == netns_inode(net.netns(f"node-{i}"))
    assert state["address"].startswith(f"{net.address('superlink')}:")
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                           f"{state['certs']}/server.crt"], capture_output=True, text=True,
                          check=True).stdout
    assert f"IP Address:{net.address('superlink')}" in sans


@pytest.mark.integration
@needs_lab
def test_each_link_is_rate_limited_both_ways(lab_deployment):
    net = lab.load(lab_deployment)
    assert net is not None
    bucket = 32 * 1024 * 8  # bits that pass before the limit bites
    up_0 = _transfer(net, "node-0", "superlink")
    up_1 = _transfer(net, "node-1", "superlink")
    down_1 = _transfer(net, "superlink", "node-1")
    assert up_1 >= 0.9 * (SIZE * 8 - bucket) / 2e6  # 2 mbit/s: ~1.9 s
    assert up_0 >= 0.9 * (SIZE * 8 - bucket) / 4e6  # 4 mbit/s: ~0.9 s
    assert down_1 >= 0.9 * (SIZE * 8 - bucket) / 16e6  # 16 mbit/s: ~0.2 s
    assert up_1 > 1.4 * up_0 and up_1 > 3 * down_1  # each node and direction its own


@pytest.mark.integration
@needs_lab
def test_a_cut_link_fails_its_node_at_the_deadline_and_it_trains_again(lab_deployment,
                                                                       tmp_path):
    state = deployment_state(lab_deployment)
    node = state["nodes"][1]
    run = start_run(lab_deployment, tmp_path / "cut", {**LAB_FAULT, "num-server-rounds": 1},
                    tool=LAB)
    try:
        wait_for(lambda: clientapps(node["pid"]), 300, "node-1 training in round 1")
        cut = subprocess.run([*LAB, "cut", "node-1", "--state-dir", str(lab_deployment)],
                             capture_output=True, text=True, timeout=60)
        assert cut.returncode == 0, cut.stderr
        cut_round = finish_run(run, tmp_path / "cut")["rounds"][0]
    finally:
        run.kill()
        restore = subprocess.run([*LAB, "restore", "node-1", "--state-dir",
                                  str(lab_deployment)], capture_output=True, text=True,
                                 timeout=60)
    assert restore.returncode == 0, restore.stderr
    assert [str(n) for n in cut_round["failed_clients"]] == [node["node_id"]]
    # ended without it by the deadline at the latest: earlier when the SuperLink sees the
    # node's heartbeat lapse first (a CI run: 51.6 s of a 60 s deadline)
    assert cut_round["wall_s"] <= TIMEOUT_S + 15
    assert cut_round["num_clients"] == 1 and cut_round["aggregated"]  # node-0 carried it
    # back online (its gRPC reconnects with a backoff of up to ~20 s), it trains again: in
    # the next run, which waits for both nodes (a round of the same run may start before
    # the node is back, and sample node-0 alone)
    wait_for(lambda: node["node_id"] in online_nodes(state), 120, "node-1 back online")
    run = start_run(lab_deployment, tmp_path / "restored",
                    {**LAB_FAULT, "num-server-rounds": 1, "min-nodes": 2}, tool=LAB)
    try:
        again = finish_run(run, tmp_path / "restored")["rounds"][0]
    finally:
        run.kill()
    assert trained(again, node["node_id"]) and again["aggregated"]


@pytest.mark.integration
@needs_lab
def test_the_superlink_host_restarts_and_the_run_resumes_to_the_same_state(lab_deployment,
                                                                          tmp_path):
    config = {**LAB_FAULT, "num-server-rounds": 2}
    run = start_run(lab_deployment, tmp_path, config, tool=LAB)
    try:
        wait_for(lambda: checkpoint_round(tmp_path) >= 1, 300, "round 1's checkpoint")
        restart = subprocess.run([*LAB, "restart", "superlink", "--state-dir",
                                  str(lab_deployment)], capture_output=True, text=True,
                                 timeout=300)
        assert restart.returncode == 0, restart.stderr[-3000:]
        assert run.wait(timeout=300) != 0  # the interrupted run fails, non-zero
    finally:
        run.kill()
    assert checkpoint_round(tmp_path) < 2
    # the SuperNodes come back by their reconnect backoff (up to ~45 s after a minute
    # without their SuperLink; a CI run's round 2 timed out at 60 s before they did): a
    # resumed run may take a longer deadline, which changes nothing else
    resumed = finish_run(start_run(lab_deployment, tmp_path, {
        **config, "resume": True, "round-timeout-s": 4 * TIMEOUT_S}, tool=LAB), tmp_path)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    # both nodes reached the new SuperLink over their new links and trained round 2
    assert all(trained(resumed["rounds"][1], n["node_id"])
               for n in deployment_state(lab_deployment)["nodes"])
    uninterrupted = run_federation({**config, "round-timeout-s": 3600.0}, 2)
    assert resumed["final_arrays_sha256"] == uninterrupted["final_arrays_sha256"]


@pytest.mark.integration
@needs_lab
def test_a_failed_lab_up_removes_everything(tmp_path):
    before = netns_and_links()
    done = subprocess.run([*LAB, "up", "--nodes", "1", "--timeout", "0.01", "--state-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "up failed" in done.stderr
    assert "stopping 1 processes" in done.stderr  # the SuperLink had started
    _assert_all_removed(tmp_path, before)


@pytest.mark.integration
@needs_lab
def test_an_interrupted_lab_up_removes_everything(tmp_path):
    before = netns_and_links()
    # as from a terminal: SIGINT not ignored (a shell's background job, CI's say, ignores
    # it, and every process it starts inherits that)
    up = subprocess.Popen([*LAB, "up", "--nodes", "2", "--state-dir", str(tmp_path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:  # Ctrl-C once the SuperLink starts: its keys and nodes are still to come
        wait_for(lambda: (tmp_path / "superlink" / "superlink.log").exists(), 300,
                 "the SuperLink starting")
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=120)
    finally:
        up.kill()
        if up.returncode == 0:  # it ended before the signal: take it down all the same
            subprocess.run([*LAB, "down", "--state-dir", str(tmp_path)], check=False)
    assert up.returncode != 0 and "lab fm" in err and "removed" in err
    time.sleep(0.5)
    _assert_all_removed(tmp_path, before)
