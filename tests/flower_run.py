"""Run the app with the real ``flwr run`` against a SuperLink this module starts.

The SuperLink (simulation mode, loopback only) is started with the same flags
Flower's managed local SuperLink uses, on free ports, and stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: isolated home, no telemetry, loopback Ray."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray binds to 127.0.0.1
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not open port {port} in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop `proc` and its process group (SuperExec, simulation, Ray) by PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def simulation_superlink(flwr_home: Path) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink; yield the env whose default connection is it."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()  # Flower 1.41 serves the Runtime, Control and Fleet APIs on one port
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = flower_env(flwr_home)
    log = open(flwr_home / "superlink.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation",
         "subprocess", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield env
    finally:
        stop(proc)
        log.close()


def flwr_run(env: dict[str, str], run_config: dict[str, Any], num_supernodes: int,
             app: Path = ROOT, timeout: float = 600) -> dict[str, Any]:
    """``flwr run APP --stream`` with `run_config`; return the parsed results.json."""
    out_dir = Path(run_config["out-dir"])
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    cmd = [str(BIN / "flwr"), "run", str(app), "--stream", "--run-config", overrides,
           "--federation-config", f"num-supernodes={num_supernodes}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    results = out_dir / "results.json"
    if done.returncode != 0 or not results.exists():
        raise AssertionError(f"flwr run failed ({done.returncode}):\n"
                             f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
    return json.loads(results.read_text())
