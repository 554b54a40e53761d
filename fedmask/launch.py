"""Run the app in Flower's simulation on a SuperLink this process starts and stops.

``flwr run .`` alone starts a managed SuperLink that keeps running afterwards.
This launcher instead starts ``flower-superlink --simulation`` on a free
loopback port with its own ``FLWR_HOME``, runs ``flwr run`` against it, and
stops the SuperLink (and the SuperExec, simulation and Ray processes under it)
by PID, even when the run fails.

Usage: ``python -m fedmask.launch [--num-supernodes N] [--run-config "k=v ..."]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
APP = Path(__file__).resolve().parents[1]
# Folders `flwr run` need not walk: it lists every file under the app folder before
# it applies .gitignore, and a .venv inside holds ~47,000 files (~7 s a run).
NOT_APP = (".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `with` blocks (a SuperLink, a staged app)
    are left and the processes they started are stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: own home, no telemetry, nothing listening
    beyond 127.0.0.1 (README, "Reliability and security")."""
    env = dict(os.environ)
    for key in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(key, None)  # would open legacy gRPC APIs on 0.0.0.0:9093 / 0.0.0.0:9092
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # Ray: a new private instance (never the cluster in RAY_ADDRESS or one that
        # `ray start` left on this machine) whose node address is 'localhost'
        # (ray_node_address), not the interface's: its servers listen on 127.0.0.1.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": "local",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def ray_node_address() -> str:
    """The node address Ray takes under flower_env (Ray's ``get_localhost_ip``): the
    first IPv4 address of 'localhost', else its first IPv6 one, else 127.0.0.1."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return str(socket.getaddrinfo("localhost", None, family, socket.SOCK_STREAM)[0][4][0])
        except OSError:
            continue
    return "127.0.0.1"


def check_ray_loopback() -> None:
    """Raise unless Ray's node address will be 127.0.0.1: Ray binds its gRPC servers
    to 127.0.0.1 for that address only, to every interface for any other."""
    if (address := ray_node_address()) != "127.0.0.1":
        raise RuntimeError(f"'localhost' resolves to {address}, not 127.0.0.1: Ray would "
                           "listen on every interface (fix /etc/hosts)")


def in_netns(netns: str | None, cmd: list[str]) -> list[str]:
    """`cmd` run in network namespace `netns` (``ip netns exec``, which execs `cmd`
    under the same PID); `cmd` itself for None."""
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of `pid`."""
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        if any(row[1].endswith(f":{port:04X}") and row[3] == "0A" for row in map(str.split, rows)):
            return True
    return False


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of the log at `path` ('' if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    """Wait until flower-superlink `proc` listens on `port`; raise with the tail of its
    `log` if it exits first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}:\n"
                               f"{tail(log)}")
        if listening(proc.pid, port):
            return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not open port {port} in {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop `proc` and its process group by PID: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def simulation_superlink(flwr_home: Path, netns: str | None = None,
                         ray_address: str | None = None) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink (in network namespace `netns`, if given; its
    ``flwr`` must run there too); yield the env whose default connection is it.
    Its Ray is a private one on 127.0.0.1, or the cluster at `ray_address`.
    Its PID is in ``flwr_home/superlink.pid`` while it runs."""
    if ray_address is None:
        check_ray_loopback()
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()  # Flower 1.41 serves the Runtime, Control and Fleet APIs on one port
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedmask"\n\n[superlink.fedmask]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = flower_env(flwr_home)
    if ray_address:  # Ray's cluster mode: node addresses are the hosts', not loopback
        env.update(RAY_ADDRESS=ray_address, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    with open(flwr_home / "superlink.log", "w") as log:
        proc = subprocess.Popen(
            in_netns(netns, [str(BIN / "flower-superlink"), "--insecure", "--simulation",
                             "--isolation", "subprocess", "--host", "127.0.0.1",
                             "--port", str(port)]),
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (flwr_home / "superlink.pid").write_text(str(proc.pid))
        try:
            wait_listening(proc, port, flwr_home / "superlink.log")
            yield env
        finally:
            stop(proc)


@contextmanager
def staged_app(app: Path) -> Iterator[Path]:
    """A temporary copy of the Flower app folder `app` without NOT_APP, for ``flwr run``."""
    with tempfile.TemporaryDirectory(prefix="fedmask-app-") as tmp:
        staged = Path(tmp) / Path(app).resolve().name
        shutil.copytree(app, staged, ignore=shutil.ignore_patterns(*NOT_APP), symlinks=True)
        yield staged


def flwr_run_command(app: Path, run_configs: list[str], num_supernodes: int,
                     cpus_per_client: int, gpus_per_client: float = 0.0) -> list[str]:
    """The ``flwr run`` command line for a simulation of `num_supernodes` nodes (each
    ClientApp actor reserving `cpus_per_client` CPUs and `gpus_per_client` of a GPU);
    each of `run_configs` ("k=v ...") is one ``--run-config``, later wins."""
    federation = (f"num-supernodes={num_supernodes} "
                  f"client-resources-num-cpus={cpus_per_client}")
    if gpus_per_client:
        federation += f" client-resources-num-gpus={gpus_per_client}"
    cmd = [str(BIN / "flwr"), "run", str(app), "--stream", "--federation-config", federation]
    for run_config in run_configs:
        cmd += ["--run-config", run_config]
    return cmd


def expand_run_configs(run_configs: list[str]) -> list[str]:
    """`run_configs` with every TOML file replaced by its ``k=v`` pairs (Flower takes
    a file only on its own; this lets files and pairs combine, later wins)."""
    return [overrides(tomllib.loads(Path(item).read_text())) if item.endswith(".toml")
            else item for item in run_configs]


def overrides(run_config: dict[str, Any]) -> str:
    """`run_config` as one ``--run-config`` string (values JSON, so strings are quoted)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs as a run config; values parsed as JSON when they parse,
    else kept as strings; a ``data-root`` is made absolute."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    if "data-root" in config:
        config["data-root"] = str(Path(config["data-root"]).expanduser().resolve())
    return config


def run_and_read(cmd: list[str], env: dict[str, str], out_dir: str | Path,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run a ``flwr run`` command line; return the results.json it wrote to `out_dir`
    (where the run's output is kept as ``run.log``).

    Raises RuntimeError with the run's output tail when it fails.
    """
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "run.log").write_text(done.stdout + done.stderr)
    results = Path(out_dir) / "results.json"
    if done.returncode != 0 or not results.exists():
        raise RuntimeError(f"flwr run failed ({done.returncode}):\n"
                           f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
    return json.loads(results.read_text())


def run_simulation(env: dict[str, str], run_config: dict[str, Any], num_supernodes: int,
                   app: Path = APP, cpus_per_client: int = 1,
                   timeout: float | None = None) -> dict[str, Any]:
    """``flwr run`` the app in simulation with `run_config` (must name out-dir)."""
    with staged_app(app) as staged:
        cmd = flwr_run_command(staged, [overrides(run_config)], num_supernodes,
                               cpus_per_client)
        return run_and_read(cmd, env, run_config["out-dir"], timeout)


def check_run_config(app: Path, run_configs: list[str]) -> None:
    """Validate fedmask's run config (the app's defaults, then `run_configs` as
    ``flwr run`` reads them) before anything starts; ConfigError names the option."""
    from flwr.common.config import parse_config_args

    from fedmask import config as run_config

    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    merged = dict(pyproject["tool"]["flwr"]["app"]["config"])
    for item in run_configs:
        merged.update(parse_config_args([item]))
    run_config.parse(merged)


def run_streaming(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``flwr run --stream``, passing its output through; its exit code, or 1 when
    it exits 0 although the run failed (Flower prints ``Exit Code: N`` then)."""
    failed = 0
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            code = re.search(r"Exit Code: (\d+)", line)
            failed = failed or int(code is not None and code.group(1) != "0")
    if proc.returncode == 0 and failed:
        print("error: the run failed (see the Exit Code above)", file=sys.stderr)
        return 1
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; non-zero when the run config is bad (2, before anything
    starts) or the run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, default=Path.cwd(), help="Flower app folder")
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="share of a GPU each simulated client's Ray actor reserves "
                             "(0.25: four clients per GPU); with device='auto' they train there")
    parser.add_argument("--run-config", action="append", default=[],
                        help='run-config overrides, e.g. "method=\'fedavg\'", or a TOML file '
                             'such as conf/ssfl-small.toml (repeatable; later wins)')
    args = parser.parse_args(argv)
    if args.gpus_per_client < 0:
        parser.error(f"--gpus-per-client: must be >= 0, got {args.gpus_per_client}")
    exit_on_sigterm()
    run_configs = expand_run_configs(args.run_config)
    if Path(args.app).resolve() == APP:
        from fedmask.config import ConfigError
        try:
            check_run_config(APP, run_configs)
        except (ConfigError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="fedmask-flwr-") as home:
        with simulation_superlink(Path(home)) as env, staged_app(args.app) as app:
            cmd = flwr_run_command(app, run_configs, args.num_supernodes,
                                   args.cpus_per_client, args.gpus_per_client)
            return run_streaming(cmd, env)


if __name__ == "__main__":
    sys.exit(main())
