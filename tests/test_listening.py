"""Nothing a local simulation or deployment starts listens beyond loopback: Ray's
ports have no authentication, and neither have the SuperLink's on `--insecure`.

The `superlink` fixture's process tree and test_deploy.py's deployment are polled
while they run (conftest.ListenWatch); the integration tests here check what was
seen, after a small run of their own when none has run yet in the session."""

import pytest

from fedmask.launch import overrides, run_and_read

from conftest import (
    DEPLOY,
    SMALL,
    ListenWatch,
    deployed,
    is_loopback,
    node_addresses,
    process_label,
    small_simulation,
)

ONE_ROUND = {"method": "hidenseek", "num-server-rounds": 1}


def test_loopback_is_127_slash_8_and_ipv6_one_also_ipv4_mapped():
    for ip in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(ip), ip
    for ip in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "fd00::2"):
        assert not is_loopback(ip), ip


def test_process_label_skips_the_interpreter_and_node_addresses_are_read():
    python = ["/v/bin/python", "-u", "/v/bin/flwr-simulation", "--insecure"]
    assert process_label(python) == "flwr-simulation"
    assert process_label(["ray::ClientAppActor "]) == "ray::ClientAppActor"
    assert process_label(["/v/ray/core/src/ray/gcs/gcs_server", "--node-ip-address=x"]) == (
        "gcs_server")
    raylet = ["raylet", "--node_ip_address=127.0.0.1",
              "--python_worker_command=python w.py --node-ip-address=10.0.0.1"]
    assert node_addresses(raylet) == {"127.0.0.1"}
    assert node_addresses(["gcs_server", "--node-ip-address=192.0.2.2"]) == {"192.0.2.2"}


def check_loopback_only(watch: ListenWatch, must_listen: set[str]) -> None:
    """Print what `watch` saw; fail on a socket beyond loopback, or unless every
    process named in `must_listen` (a label prefix) was seen listening."""
    listeners, processes, _ = watch.seen()
    print("\n".join(sorted(map(str, listeners))))
    print("processes seen:", sorted(processes))
    labels = {listener.process for listener in listeners}
    assert {name for name in must_listen
            if not any(label.startswith(name) for label in labels)} == set()
    exposed = sorted(str(listener) for listener in listeners if not is_loopback(listener.ip))
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_a_simulation_listens_on_loopback_only_with_ray_on_127_0_0_1(
        superlink, simulation_sockets, tmp_path_factory):
    if "raylet" not in simulation_sockets.seen()[1]:  # no simulation ran yet
        small_simulation(superlink, tmp_path_factory, **ONE_ROUND)
    check_loopback_only(simulation_sockets, {"flower-superlink", "flwr-simulation",
                                             "gcs_server", "raylet", "ray::ClientAppActor"})
    assert simulation_sockets.seen()[2] == {"127.0.0.1"}


@pytest.fixture(scope="module")
def deployment_run(deployment_sockets, tmp_path_factory):
    """`deployment_sockets` once it has watched a deployed run: test_deploy.py's, or
    a one-round run on a 2-node deployment of its own when that did not run first."""
    if "flwr-serverapp" not in deployment_sockets.seen()[1]:
        with deployed(tmp_path_factory.mktemp("listening"), 2,
                      watch=deployment_sockets) as state:
            out = tmp_path_factory.mktemp("listening-run")
            config = overrides({**SMALL, **ONE_ROUND, "out-dir": str(out)})
            run_and_read([DEPLOY, "run", "--state-dir", str(state), "--run-config", config],
                         None, out, timeout=900)
    return deployment_sockets


def test_a_deployment_listens_on_loopback_only(deployment_run):
    check_loopback_only(deployment_run, {"flower-superlink", "flower-supernode"})
    assert {"flwr-serverapp", "flwr-clientapp"} <= deployment_run.seen()[1]
