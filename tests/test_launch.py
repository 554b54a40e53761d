"""The launcher's command lines and run-config handling (its SuperLink runs in the
simulation tests)."""

import os
import socket
import sys
import tomllib
from pathlib import Path

import pytest

from fedmask import launch
from fedmask.launch import (
    check_ray_loopback,
    expand_run_configs,
    flower_env,
    flwr_run_command,
    in_netns,
    listening,
    overrides,
    ray_node_address,
)


def test_overrides_quote_strings_and_keep_numbers_and_bools():
    text = overrides({"method": "ssfl", "alpha": 0.3, "seed": 2, "saliency-weighted": False})
    assert text == 'method="ssfl" alpha=0.3 seed=2 saliency-weighted=false'
    assert tomllib.loads(text.replace(" ", "\n")) == {
        "method": "ssfl", "alpha": 0.3, "seed": 2, "saliency-weighted": False}


def test_toml_profiles_combine_with_pairs_later_wins(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('method = "ssfl"\ndensity = 0.5\n')
    expanded = expand_run_configs(["data-root='/d'", str(profile), "method='fedavg'"])
    assert expanded == ["data-root='/d'", 'method="ssfl" density=0.5', "method='fedavg'"]


def test_flwr_run_command_passes_each_run_config():
    cmd = flwr_run_command(Path("/app"), ["a=1", "b=2"], 4, 2)
    assert cmd[1:3] == ["run", "/app"]
    assert cmd[cmd.index("--federation-config") + 1] == (
        "num-supernodes=4 client-resources-num-cpus=2")
    assert [cmd[i + 1] for i, v in enumerate(cmd) if v == "--run-config"] == ["a=1", "b=2"]
    gpu = flwr_run_command(Path("/app"), [], 8, 1, 0.25)
    assert gpu[gpu.index("--federation-config") + 1] == (
        "num-supernodes=8 client-resources-num-cpus=1 client-resources-num-gpus=0.25")


def test_flower_env_keeps_ray_private_and_local_and_no_legacy_api_open(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.2:6379")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    env = flower_env(tmp_path)
    assert env["RAY_ADDRESS"] == "local" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env and env["FLWR_HOME"] == str(tmp_path)


def _resolving_localhost(monkeypatch, addresses: dict[int, str]) -> None:
    def getaddrinfo(host, port, family, kind):
        assert host == "localhost"
        if family not in addresses:
            raise socket.gaierror("no address")
        return [(family, kind, 6, "", (addresses[family], 0))]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_ray_takes_localhost_ipv4_first_and_only_127_0_0_1_passes(monkeypatch):
    for addresses in ({socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}, {}):
        _resolving_localhost(monkeypatch, addresses)
        assert ray_node_address() == "127.0.0.1"
        check_ray_loopback()
    for addresses, node in [({socket.AF_INET6: "::1"}, "::1"),
                            ({socket.AF_INET: "127.0.1.1"}, "127.0.1.1")]:
        _resolving_localhost(monkeypatch, addresses)
        assert ray_node_address() == node
        with pytest.raises(RuntimeError, match=f"resolves to {node}, not 127.0.0.1"):
            check_ray_loopback()



def test_a_bad_option_fails_before_anything_starts_naming_it(monkeypatch, capsys):
    monkeypatch.setattr(launch, "simulation_superlink",
                        lambda home: pytest.fail("a SuperLink was started"))
    assert launch.main(["--run-config", "method='bogus'"]) == 2
    assert "method: 'bogus' is not allowed" in capsys.readouterr().err
    assert launch.main(["--run-config", "num-server-rounds=0 seed=1"]) == 2
    assert "num-server-rounds" in capsys.readouterr().err


def test_a_run_that_flower_ends_with_an_exit_code_exits_non_zero(capsys):
    failing = [sys.executable, "-c", "print('ConfigError: boom'); print('Exit Code: 700')"]
    assert launch.run_streaming(failing, dict(os.environ)) == 1
    out = capsys.readouterr()
    assert "Exit Code: 700" in out.out and "the run failed" in out.err
    fine = [sys.executable, "-c", "print('round 1/1')"]
    assert launch.run_streaming(fine, dict(os.environ)) == 0
    crashed = [sys.executable, "-c", "raise SystemExit(3)"]
    assert launch.run_streaming(crashed, dict(os.environ)) == 3


def test_listening_sees_a_listening_socket_of_the_process_only_while_it_listens():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening(os.getpid(), port)
    assert not listening(os.getpid(), port)
    with socket.socket() as bound:  # bound, not listening
        bound.bind(("127.0.0.1", 0))
        assert not listening(os.getpid(), bound.getsockname()[1])


def test_in_netns_prefixes_ip_netns_exec_only_for_a_namespace():
    assert in_netns("lab-n0", ["flwr", "run"]) == ["ip", "netns", "exec", "lab-n0", "flwr", "run"]
    assert in_netns(None, ["flwr", "run"]) == ["flwr", "run"]
