"""A real deployment on 127.0.0.1: TLS SuperLink with SuperNode authentication, 3 SuperNodes.

Runs HideNseek through `deploy/local.sh` and checks that it gives the same results.json
fields and the same final global mask as the simulation, and that a SuperNode whose key
was never registered is refused. `down` stops every process `up` started, even on failure.
"""

import json
import subprocess

import pytest

from fedmask.launch import BIN, flower_env, free_port, overrides, run_and_read

from conftest import DEPLOY, ROOT, SMALL, SMALL_NODES, deployed

# Each ClientApp trains on one thread, as in the simulation (Ray gives each simulated
# client 1 CPU): float sums in other thread counts round differently, and a score that
# ends near zero may then take the other sign.
ONE_THREAD = tuple(f"{node}:OMP_NUM_THREADS=1" for node in range(SMALL_NODES))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, deployment_sockets):
    with deployed(tmp_path_factory.mktemp("deployment"), SMALL_NODES, ONE_THREAD,
                  watch=deployment_sockets) as state:
        yield state


@pytest.fixture(scope="module")
def deployed_hidenseek(deployment, tmp_path_factory):
    out = tmp_path_factory.mktemp("deployed-hidenseek")
    config = {**SMALL, "method": "hidenseek", "out-dir": str(out)}
    cmd = [DEPLOY, "run", "--state-dir", str(deployment), "--run-config", overrides(config)]
    return run_and_read(cmd, None, out, timeout=900)


def test_deployed_run_reports_like_the_simulation(deployed_hidenseek, hidenseek):
    assert set(deployed_hidenseek) == set(hidenseek)
    assert [r["round"] for r in deployed_hidenseek["rounds"]] == [1, 2]
    for record, simulated in zip(deployed_hidenseek["rounds"], hidenseek["rounds"]):
        assert set(record) == set(simulated)
        assert record["num_clients"] == SMALL_NODES and record["failed_clients"] == []
        # the same payload to the byte; Flower's framing differs by its ids
        for key in ("array_bytes_up", "array_bytes_down"):
            assert record[key] == simulated[key]
        assert abs(record["bytes_up"] - simulated["bytes_up"]) < 200 * SMALL_NODES
        assert record["wall_s"] > 0
        # a SuperNode starts a ClientApp process per message: each reports its start
        assert all(0 < client["start_s"] < record["wall_s"] for client in record["clients"])


def test_deployment_and_simulation_reach_the_same_global_mask(deployed_hidenseek, hidenseek):
    assert deployed_hidenseek["final_arrays_sha256"] == hidenseek["final_arrays_sha256"]
    for record, simulated in zip(deployed_hidenseek["rounds"], hidenseek["rounds"]):
        assert record["accuracy"] == simulated["accuracy"]


def test_unregistered_supernode_is_refused(deployment, tmp_path):
    state = json.loads((deployment / "state.json").read_text())
    subprocess.run(["bash", str(ROOT / "deploy" / "gen_certs.sh"), str(tmp_path), "1"],
                   check=True, capture_output=True)
    cmd = [str(BIN / "flower-supernode"), "--superlink", state["address"],
           "--root-certificates", str(deployment / "certs" / "ca.crt"),
           "--auth-supernode-private-key", str(tmp_path / "node-0"),  # never registered
           "--node-config", "partition-id=0 num-partitions=1", "--isolation", "process",
           "--host", "127.0.0.1", "--port", str(free_port())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=flower_env(tmp_path / "flwr-home"))
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in output


def test_the_supernodes_keep_what_they_were_sent_between_clientapp_processes(
        deployed_hidenseek):
    """Round 1 sends each node P and the signs; each message starts a new ClientApp
    process, and round 2 sends only the signs that changed: the node's context.state
    (held by the SuperNode) kept the rest, as for every method that holds a mask."""
    first, second = deployed_hidenseek["rounds"]
    n = deployed_hidenseek["num_params"]
    assert all(n / 400 < c["bytes_down"] for c in first["clients"])
    assert all(c["bytes_down"] < 2000 for c in second["clients"])
    assert all(r["num_clients"] == SMALL_NODES and not r["rejected_clients"]
               for r in (first, second))


def test_node_env_is_checked_before_anything_starts(tmp_path):
    done = subprocess.run([DEPLOY, "up", "--nodes", "2", "--node-env", "2:A=b",
                           "--state-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--node-env: '2:A=b'" in done.stderr


def test_a_bad_option_fails_before_the_deployment_is_asked(tmp_path):
    """`deploy/local.sh run` checks fedmask's run config first: exit 2, naming the
    option, whether or not a deployment is up."""
    done = subprocess.run([DEPLOY, "run", "--state-dir", str(tmp_path), "--run-config",
                           "method='bogus' num-server-rounds=2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "method" in done.stderr and "bogus" in done.stderr
