"""One-host Flower deployment of fedmask: a real SuperLink and N SuperNodes on 127.0.0.1.

The SuperLink serves its Fleet, Control and Runtime APIs on one TLS port with
SuperNode authentication; every SuperNode key is registered with
``flwr supernode register`` before the SuperNodes start; each SuperNode gets its own
Runtime (ClientAppIo) port, ``FLWR_HOME`` and ``partition-id``/``num-partitions``.
Every process started is recorded (PID, start time) in STATE_DIR/pids.jsonl as
soon as it starts, so ``down`` stops them even when ``up`` failed half way.
deploy/lab.py runs the same deployment with each process on a host of its own
(a network namespace; ``Hosts``).

Usage (entry point: deploy/local.sh):
  deploy/local.sh up   [--nodes N] [--node-env I:KEY=VALUE]... [--timeout S] [--state-dir DIR]
                                                # prints the connection name
  deploy/local.sh run  [--app DIR] [--state-dir DIR] [FLWR RUN ARGS...]  # e.g. --run-config "..."
  deploy/local.sh restart superlink|node-I [--state-dir DIR]   # after a crash
  deploy/local.sh down [--state-dir DIR]
  deploy/local.sh status [--state-dir DIR]
STATE_DIR defaults to $FEDMASK_DEPLOY_DIR, else $TMPDIR/fedmask-deploy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fedmask.launch import (  # noqa: E402
    BIN,
    check_run_config,
    expand_run_configs,
    flower_env,
    free_port,
    in_netns,
    run_streaming,
    staged_app,
    tail,
    wait_listening,
)

HOST = "127.0.0.1"
CONNECTION = "fedmask"
PIDS = "pids.jsonl"
STATE = "state.json"
DATABASE = "state.db"  # the SuperLink's: runs, registered keys; survives a restart
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class Hosts:
    """Where a deployment runs: the SuperLink's address and, by process name
    (``superlink``, ``node-I``), the network namespace of its host (absent: this one)."""

    address: str = HOST
    netns: dict[str, str] = field(default_factory=dict)


def on_host(state: dict, name: str, cmd: list[str]) -> list[str]:
    """`cmd` run on the host of process `name` (``ip netns exec`` into its namespace,
    which then execs `cmd` under the same PID)."""
    return in_netns(state.get("netns", {}).get(name), cmd)


def default_state_dir() -> Path:
    return Path(os.environ.get("FEDMASK_DEPLOY_DIR")
                or Path(tempfile.gettempdir()) / "fedmask-deploy")


def log(msg: str) -> None:
    print(f"[deploy] {msg}", file=sys.stderr, flush=True)


def env_for(home: Path) -> dict[str, str]:
    """Flower env with its own FLWR_HOME; no telemetry, update check or `uv sync`."""
    home.mkdir(parents=True, exist_ok=True)
    return flower_env(home)


# --- processes -------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in ticks) of `pid`, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X") and st[3] == start


def _all_procs() -> dict[int, tuple[str, int, int, int]]:
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            procs[int(entry.name)] = st
    return procs


def record(state_dir: Path, name: str, pid: int, group: bool) -> None:
    """Append a started process to the PID file (flushed: `down` must see it)."""
    st = _stat(pid)
    entry = {"name": name, "pid": pid, "start": st[3] if st else -1, "group": group}
    with open(state_dir / PIDS, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def recorded(state_dir: Path) -> list[dict]:
    path = state_dir / PIDS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start(state_dir: Path, name: str, cmd: list[str], env: dict[str, str],
          logfile: Path) -> subprocess.Popen:
    """Start `cmd` as leader of a new process group, output to `logfile`; record it."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    record(state_dir, name, proc.pid, group=True)
    return proc


def record_descendants(state_dir: Path) -> None:
    """Record the processes spawned by recorded ones (the SuperLink's SuperExec runs
    in its own session, so its process group is not the SuperLink's)."""
    known = {r["pid"] for r in recorded(state_dir)}
    for pid, st in _our_processes(state_dir).items():
        if pid not in known:
            record(state_dir, f"child-of-{st[1]}", pid, group=False)


def _ours(state_dir: Path) -> tuple[dict[int, tuple[str, int, int, int]], set[int]]:
    """Live processes started by this deployment (recorded ones whose start time still
    matches, members of their process groups, all their descendants) and those groups."""
    procs = _all_procs()
    roots, groups = set(), set()
    for r in recorded(state_dir):
        st = procs.get(r["pid"])
        if st is not None and st[3] != r["start"]:
            continue  # PID reused by a process that is not ours
        if st is not None and st[0] not in ("Z", "X"):
            roots.add(r["pid"])
        if r["group"]:
            groups.add(r["pid"])  # a group outlives its leader; its id is not reused
    roots |= {pid for pid, st in procs.items() if st[2] in groups}
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st[1], []).append(pid)
    ours, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, []))
    live = {pid: procs[pid] for pid in ours if procs[pid][0] not in ("Z", "X")}
    return live, groups | {pid for pid, st in live.items() if st[2] == pid}


def _our_processes(state_dir: Path) -> dict[int, tuple[str, int, int, int]]:
    return _ours(state_dir)[0]


def _signal(targets: dict[int, tuple[str, int, int, int]], groups: set[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid, st in targets.items():
        if _alive(pid, st[3]):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def down(state_dir: Path, grace_s: float = STOP_GRACE_S) -> int:
    """Stop every recorded process, its group and its descendants: SIGTERM, then
    SIGKILL to those still running after `grace_s`."""
    targets, groups = _ours(state_dir)
    if not targets:
        log(f"nothing running from {state_dir}")
        (state_dir / PIDS).unlink(missing_ok=True)
        return 0
    log(f"stopping {len(targets)} processes: {sorted(targets)}")
    _signal(targets, groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = {pid: st for pid, st in targets.items() if _alive(pid, st[3])}
        if not left:
            break
        time.sleep(0.3)
    else:
        left, groups = _ours(state_dir)
        log(f"SIGKILL {sorted(left)}")
        _signal(left, groups, signal.SIGKILL)
        time.sleep(0.5)
    rest = _our_processes(state_dir)
    if rest:
        log(f"still running: {sorted(rest)}")
        return 1
    (state_dir / PIDS).unlink(missing_ok=True)
    log("all stopped")
    return 0


# --- Flower ------------------------------------------------------------------------

def flwr_cli(state: dict, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the flwr CLI against the deployment (its own FLWR_HOME with config.toml)."""
    return subprocess.run(on_host(state, "superlink", [str(BIN / "flwr"), *args]),
                          env=env_for(Path(state["cli_home"])),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _json_out(text: str) -> dict:
    return json.loads(text[text.index("{"): text.rindex("}") + 1])


def online_nodes(state: dict) -> list[str]:
    """Node ids the SuperLink reports online (empty if it cannot be asked)."""
    done = flwr_cli(state, "supernode", "list", state["connection"], "--format", "json")
    try:
        nodes = _json_out(done.stdout)["nodes"]
    except (ValueError, KeyError):
        return []
    return [n["node-id"] for n in nodes if n["status"] == "online"]


def superlink_cmd(certs: Path, address: str, database: Path) -> list[str]:
    host, port = address.rsplit(":", 1)
    return [str(BIN / "flower-superlink"),
            "--database", str(database),
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.crt"),
            "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth",
            "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            "--host", host, "--port", port]


def supernode_cmd(certs: Path, superlink: str, private_key: Path, runtime_port: int,
                  partition_id: int, num_partitions: int) -> list[str]:
    """A SuperNode: TLS to the SuperLink (CA-verified), authenticated with `private_key`,
    its Runtime API (where the ClientApp connects) on `runtime_port` with TLS as well."""
    return [str(BIN / "flower-supernode"),
            "--superlink", superlink,
            "--root-certificates", str(certs / "ca.crt"),
            "--auth-supernode-private-key", str(private_key),
            "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
            "--isolation", "subprocess",
            "--host", HOST, "--port", str(runtime_port),
            "--ssl-certfile", str(certs / "server.crt"),
            "--ssl-keyfile", str(certs / "server.key"),
            "--ssl-ca-certfile", str(certs / "ca.crt")]


def start_superlink(state_dir: Path, state: dict, timeout: float) -> subprocess.Popen:
    """Start the SuperLink on the deployment's port (its state, registered keys
    included, in a database file that outlives the process); wait for the port."""
    home = state_dir / "superlink"
    link_log = home / "superlink.log"
    cmd = superlink_cmd(Path(state["certs"]), state["address"], home / DATABASE)
    proc = start(state_dir, "superlink", on_host(state, "superlink", cmd), env_for(home),
                 link_log)
    wait_listening(proc, int(state["address"].rsplit(":", 1)[1]), link_log, timeout)
    state["superlink_pid"] = proc.pid
    (state_dir / STATE).write_text(json.dumps(state, indent=1))
    log(f"SuperLink on {state['address']} (TLS, SuperNode auth), PID {proc.pid}")
    return proc


def start_node(state_dir: Path, state: dict, i: int) -> subprocess.Popen:
    """Start SuperNode `i` with its key, partition and Runtime port (not waiting)."""
    home, node = state_dir / f"node-{i}", state["nodes"][i]
    certs = Path(state["certs"])
    cmd = supernode_cmd(certs, state["address"], certs / f"node-{i}", node["runtime_port"], i,
                        state["num_nodes"])
    env = {**env_for(home), **node.get("env", {})}
    proc = start(state_dir, f"node-{i}", on_host(state, f"node-{i}", cmd), env,
                 home / "supernode.log")
    node["pid"] = proc.pid
    (state_dir / STATE).write_text(json.dumps(state, indent=1))
    return proc


def parse_node_env(items: list[str], num_nodes: int) -> dict[int, dict[str, str]]:
    """``I:KEY=VALUE`` items as {node index: {KEY: VALUE}}; ValueError naming
    ``--node-env`` for a malformed item or an index outside the nodes."""
    out: dict[int, dict[str, str]] = {}
    for item in items:
        index, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (index.isdigit() and key and eq) or int(index) >= num_nodes:
            raise ValueError(f"--node-env: {item!r} is not I:KEY=VALUE with I in "
                             f"0..{num_nodes - 1}")
        out.setdefault(int(index), {})[key] = value
    return out


def up(state_dir: Path, num_nodes: int, timeout: float,
       node_env: dict[int, dict[str, str]] | None = None,
       hosts: Hosts | None = None) -> int:
    """Start the SuperLink on `hosts`' address, register N SuperNode keys, start the
    SuperNodes and wait until all are online; 1 (all stopped again) on failure."""
    hosts = hosts or Hosts()
    if _our_processes(state_dir):
        log(f"a deployment from {state_dir} is running; `deploy/local.sh down` first")
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / PIDS).unlink(missing_ok=True)
    (state_dir / "superlink" / DATABASE).unlink(missing_ok=True)  # a new deployment
    certs = state_dir / "certs"
    sans = [] if hosts.address == HOST else [f"IP:{hosts.address}"]
    subprocess.run(["bash", str(REPO / "deploy" / "gen_certs.sh"), str(certs), str(num_nodes),
                    *sans], check=True, stdout=subprocess.DEVNULL)

    address = f"{hosts.address}:{free_port()}"
    cli_home = state_dir / "cli"
    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    state: dict[str, Any] = {
        "connection": CONNECTION, "address": address, "cli_home": str(cli_home),
        "certs": str(certs), "num_nodes": num_nodes, "nodes": [], "netns": hosts.netns}
    (state_dir / STATE).write_text(json.dumps(state, indent=1))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up below on SIGTERM
    try:
        start_superlink(state_dir, state, timeout)

        for i in range(num_nodes):
            done = flwr_cli(state, "supernode", "register", str(certs / f"node-{i}.pub"),
                            CONNECTION, "--name", f"node-{i}", "--format", "json")
            try:
                node_id = _json_out(done.stdout)["node-id"]
            except (ValueError, KeyError):
                raise RuntimeError(f"registering node-{i} failed ({done.returncode}):\n"
                                   f"{done.stdout}\n{done.stderr}") from None
            state["nodes"].append({"name": f"node-{i}", "node_id": str(node_id),
                                   "runtime_port": free_port(),
                                   "env": (node_env or {}).get(i, {})})
        log(f"registered {num_nodes} SuperNode keys: "
            f"{[n['node_id'] for n in state['nodes']]}")

        nodes = [start_node(state_dir, state, i) for i in range(num_nodes)]
        deadline = time.monotonic() + timeout
        while len(online := online_nodes(state)) < num_nodes:
            for i, node in enumerate(nodes):
                if node.poll() is not None:
                    raise RuntimeError(f"node-{i} exited with code {node.returncode}:\n"
                                       f"{tail(state_dir / f'node-{i}' / 'supernode.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(online)}/{num_nodes} SuperNodes online "
                                   f"after {timeout:.0f} s")
            time.sleep(2)
        record_descendants(state_dir)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as err:
        log(f"up failed: {err}")
        log("stopping what was started")
        down(state_dir)
        return 1
    except BaseException:
        down(state_dir)
        raise
    log(f"{num_nodes} SuperNodes online; logs and FLWR_HOMEs under {state_dir}")
    flwr_run = " ".join(on_host(state, "superlink", ["flwr", "run", str(REPO), CONNECTION]))
    log(f"run: deploy/local.sh run --run-config \"...\"   or   "
        f"FLWR_HOME={cli_home} {flwr_run} --stream")
    print(CONNECTION, flush=True)
    return 0


def load_state(state_dir: Path) -> dict:
    path = state_dir / STATE
    if not path.exists() or not _our_processes(state_dir):
        raise SystemExit(f"[deploy] no deployment running from {state_dir}; "
                         "`deploy/local.sh up` first")
    return json.loads(path.read_text())


def run_config_args(extra: list[str]) -> list[str]:
    """The values of every ``--run-config`` in the flwr run arguments `extra`."""
    values = [arg.split("=", 1)[1] for arg in extra if arg.startswith("--run-config=")]
    values += [value for flag, value in zip(extra, extra[1:]) if flag == "--run-config"]
    return values


def run(state_dir: Path, app: Path, extra: list[str]) -> int:
    """``flwr run APP <connection> --stream EXTRA...`` against the deployment; 2 when
    fedmask's run config is bad (checked first), 1 when the run failed."""
    if app == REPO:
        try:
            check_run_config(REPO, expand_run_configs(run_config_args(extra)))
        except ValueError as err:  # ConfigError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            return 2
    state = load_state(state_dir)
    with staged_app(app) as staged:
        cmd = on_host(state, "superlink", [str(BIN / "flwr"), "run", str(staged),
                                           state["connection"], "--stream", *extra])
        return run_streaming(cmd, env_for(Path(state["cli_home"])))


def _stop(pid: int) -> None:
    """Stop the process group `pid` leads: SIGTERM, then SIGKILL after the grace time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and (st := _stat(pid)) is not None and st[0] != "Z":
            time.sleep(0.3)


def _wait_listed(state: dict, node_ids: set[str], online: bool, timeout: float) -> None:
    """Wait until the SuperLink lists every one of `node_ids` online (or none of them)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = node_ids & {str(n) for n in online_nodes(state)}
        if listed == (node_ids if online else set()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperNodes {sorted(node_ids)} not "
                               f"{'online' if online else 'offline'} after {timeout:.0f} s")
        time.sleep(1)


def restart(state_dir: Path, name: str, timeout: float) -> int:
    """Start the SuperLink or SuperNode `name` again, as after a crash (stopping it
    first if it still runs); wait until the SuperNodes it serves, or it, are online."""
    state = json.loads((state_dir / STATE).read_text()) if (state_dir / STATE).exists() else {}
    names = ["superlink", *(n["name"] for n in state.get("nodes", []))]
    if name not in names:
        log(f"restart: {name!r} is not one of {names} (from {state_dir})")
        return 2
    try:
        if name == "superlink":
            _stop(state["superlink_pid"])
            start_superlink(state_dir, state, timeout)
            waiting = {n["node_id"] for n in state["nodes"] if _stat(n["pid"]) is not None}
        else:
            index = names.index(name) - 1
            _stop(state["nodes"][index]["pid"])
            waiting = {state["nodes"][index]["node_id"]}
            log(f"waiting for the SuperLink to see {name} gone (its heartbeat expires "
                "in about a minute) before it may connect again")
            _wait_listed(state, waiting, False, timeout)
            start_node(state_dir, state, index)
        _wait_listed(state, waiting, True, timeout)
        record_descendants(state_dir)
    except (RuntimeError, TimeoutError, OSError) as err:
        log(f"restart {name} failed: {err}")
        return 1
    log(f"{name} restarted; SuperNodes {sorted(waiting)} online")
    return 0


def status(state_dir: Path) -> int:
    state = load_state(state_dir)
    for pid, st in sorted(_our_processes(state_dir).items()):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        print(f"{pid:>7} pgid {st[2]:>7}  {cmdline[:110]}")
    done = flwr_cli(state, "supernode", "list", state["connection"])
    print(done.stdout or done.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/local.sh", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Usage"):])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "run", "restart", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", type=Path, default=default_state_dir())
        if name == "up":
            p.add_argument("--nodes", type=int, default=2)
            p.add_argument("--node-env", action="append", default=[], metavar="I:KEY=VALUE",
                           help="an environment variable of SuperNode I and its ClientApps "
                                "(repeatable; kept by restart), e.g. "
                                "0:ATEN_CPU_CAPABILITY=default")
        if name == "restart":
            p.add_argument("name", help="superlink or node-I")
        if name in ("up", "restart"):
            p.add_argument("--timeout", type=float, default=300.0,
                           help="seconds to wait for the SuperLink and the SuperNodes")
        if name == "run":
            p.add_argument("--app", type=Path, default=REPO)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    state_dir = args.state_dir.resolve()
    if args.command == "up":
        if args.nodes < 1:
            parser.error("--nodes must be >= 1")
        try:
            node_env = parse_node_env(args.node_env, args.nodes)
        except ValueError as err:
            parser.error(str(err))
        return up(state_dir, args.nodes, args.timeout, node_env)
    if args.command == "run":
        return run(state_dir, args.app.resolve(), extra)
    if args.command == "restart":
        return restart(state_dir, args.name, args.timeout)
    if args.command == "down":
        return down(state_dir)
    return status(state_dir)


if __name__ == "__main__":
    sys.exit(main())
