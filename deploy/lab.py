"""Network lab: deploy/local.py's deployment, each process on a host of its own.

The SuperLink and every SuperNode run in a network namespace of their own, each
node's link to the SuperLink's host rate-limited both ways.

Hosts of a lab named L (a random name, so that labs never collide):
  L-link  10.77.0.1     the SuperLink (and the operator's `flwr`); a bridge there
                        joins the nodes' links
  L-nI    10.77.0.(I+2) SuperNode I; its ClientApps reach it on the host's own 127.0.0.1
Each link is a veth pair (node: eth0, SuperLink host: nI) with a tc tbf limiter on
each end: `up` (node to SuperLink) on eth0, `down` on nI. The server certificate
names 10.77.0.1; SuperNode authentication as in local.py. Needs root, `ip`, `tc`.

Usage (entry point: deploy/local.sh lab ...):
  deploy/local.sh lab up [--nodes N] [--link [I:]up=RATE,down=RATE]... [--timeout S]
                         [--node-env I:KEY=VALUE]... [--state-dir DIR]
  deploy/local.sh lab run [--app DIR] [FLWR RUN ARGS...]        as deploy/local.sh run
  deploy/local.sh lab cut node-I | restore node-I      take node I's link down / up again
  deploy/local.sh lab restart superlink|node-I         restart that host: its processes
        killed, its namespace and links made anew, its Flower process started again
  deploy/local.sh lab status | down                    down removes every host and link
RATE: a number and tc's unit: bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps
(bytes/s), e.g. 500kbit, 2mbit. `--link` without I: every node; I: node I (wins).
STATE_DIR defaults to $FEDMASK_DEPLOY_DIR, else $TMPDIR/fedmask-deploy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import local

SUBNET = "10.77.0"
LAB = "lab.json"
BRIDGE = "br0"
NODE_DEV = "eth0"
LATENCY = "400ms"  # how long a packet may wait in a limiter before it is dropped
UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
         "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
RATE = re.compile(r"(\d+(?:\.\d+)?)(" + "|".join(UNITS) + r")")
LINK_FORM = ("[I:]up=RATE,down=RATE (either may be left out; RATE a number and one of "
             f"{', '.join(UNITS)}, e.g. 2mbit")


class LabError(RuntimeError):
    """An `ip` or `tc` command of the lab failed."""


def unavailable() -> str | None:
    """Why a lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the network lab needs root (it creates network namespaces)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"the network lab needs {' and '.join(missing)} (iproute2)" if missing else None


def _sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def rate_bits(rate: str) -> int:
    """A tc rate (``2mbit``, ``500kbps``) in bit/s; ValueError if it is not one."""
    match = RATE.fullmatch(rate.lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(rate)
    return int(float(match.group(1)) * UNITS[match.group(2)])


def _link_item(item: str, num_nodes: int) -> tuple[list[int], dict[str, int]]:
    """The nodes and rates (bit/s) of one ``--link`` item; ValueError if malformed."""
    index, colon, profile = item.rpartition(":")
    pairs = [part.partition("=") for part in profile.split(",")]
    keys = [key for key, _, _ in pairs]
    if not set(keys) <= {"up", "down"} or len(set(keys)) != len(keys):
        raise ValueError(item)
    nodes = [int(index)] if colon else list(range(num_nodes))
    if not all(0 <= node < num_nodes for node in nodes):
        raise ValueError(item)
    return nodes, {key: rate_bits(value) for key, _, value in pairs}


def parse_links(items: list[str], num_nodes: int) -> dict[int, dict[str, int]]:
    """``[I:]up=RATE,down=RATE`` items as {node: {"up"/"down": bit/s}}; an item without
    I sets every node, later items win; ValueError naming ``--link`` if malformed."""
    links: dict[int, dict[str, int]] = {i: {} for i in range(num_nodes)}
    for item in items:
        try:
            nodes, rates = _link_item(item, num_nodes)
        except ValueError:
            raise ValueError(f"--link: {item!r} is not {LINK_FORM}, I in "
                             f"0..{num_nodes - 1})") from None
        for node in nodes:
            links[node].update(rates)
    return links


def new_name() -> str:
    """A lab name no network namespace here starts with."""
    while True:
        name = f"fm{secrets.token_hex(3)}"
        if not any(Path("/run/netns").glob(f"{name}-*")):
            return name


@dataclass(frozen=True)
class Network:
    """A lab's hosts and links: `links[I]` holds node I's rates in bit/s."""

    name: str
    links: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return ["superlink", *(f"node-{i}" for i in self.links)]

    def netns(self, host: str) -> str:
        return f"{self.name}-link" if host == "superlink" else f"{self.name}-n{_index(host)}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{1 if host == 'superlink' else _index(host) + 2}"

    def deployment_hosts(self) -> local.Hosts:
        return local.Hosts(self.address("superlink"), {h: self.netns(h) for h in self.hosts})

    def create(self) -> None:
        """Every host with its links (call remove() also when this fails)."""
        for host in self.hosts:
            self._add_host(host)

    def remove(self) -> None:
        """Kill every process left on the lab's hosts (by PID) and delete them; a
        host's links go with it."""
        for host in self.hosts:
            self._remove_host(host)

    def reboot(self, host: str) -> None:
        """`host` restarted: its processes killed, its namespace and links made anew."""
        self._remove_host(host)
        self._add_host(host)

    def set_link(self, host: str, up: bool) -> None:
        """Take node `host`'s link down (as a cut cable) or up again."""
        _sh("ip", "-n", self.netns(host), "link", "set", NODE_DEV, "up" if up else "down")

    def _add_host(self, host: str) -> None:
        netns = self.netns(host)
        _sh("ip", "netns", "add", netns)
        _sh("ip", "-n", netns, "link", "set", "lo", "up")
        if host == "superlink":
            _sh("ip", "-n", netns, "link", "add", BRIDGE, "type", "bridge")
            _sh("ip", "-n", netns, "addr", "add", f"{self.address(host)}/24", "dev", BRIDGE)
            _sh("ip", "-n", netns, "link", "set", BRIDGE, "up")
            for node in self.hosts[1:]:
                if Path(f"/run/netns/{self.netns(node)}").exists():
                    self._wire(node)
        elif Path(f"/run/netns/{self.netns('superlink')}").exists():
            self._wire(host)

    def _wire(self, node: str) -> None:
        """Node `node`'s link to the SuperLink's host: a veth pair, limiters on both ends."""
        netns, hub, port = self.netns(node), self.netns("superlink"), f"n{_index(node)}"
        _sh("ip", "-n", netns, "link", "add", NODE_DEV, "type", "veth", "peer", "name", port,
            "netns", hub)
        _sh("ip", "-n", netns, "addr", "add", f"{self.address(node)}/24", "dev", NODE_DEV)
        _sh("ip", "-n", hub, "link", "set", port, "master", BRIDGE)
        rates = self.links.get(_index(node), {})
        for ns, dev, direction in ((netns, NODE_DEV, "up"), (hub, port, "down")):
            if direction in rates:
                _limit(ns, dev, rates[direction])
            _sh("ip", "-n", ns, "link", "set", dev, "up")

    def _remove_host(self, host: str) -> None:
        netns = self.netns(host)
        if not Path(f"/run/netns/{netns}").exists():
            return
        for pid in _sh("ip", "netns", "pids", netns).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A namespace is cleaned up in the background: delete its links now, so that
        # new ones of the same names can be made at once.
        ends = [f"n{_index(h)}" for h in self.hosts[1:]] if host == "superlink" else [NODE_DEV]
        for dev in ends:
            subprocess.run(["ip", "-n", netns, "link", "del", dev], capture_output=True,
                           check=False)  # a link that is not there: nothing to delete
        _sh("ip", "netns", "del", netns)


def _index(host: str) -> int:
    return int(host.removeprefix("node-"))


def _limit(netns: str, dev: str, bits: int) -> None:
    """A tbf limiter of `bits` bit/s on `dev`'s egress; its bucket holds at least
    32 KiB (more than the MTU) and 10 ms worth of traffic."""
    burst = max(32 * 1024, bits // 8 // 100)
    _sh("tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{bits}bit",
        "burst", str(burst), "latency", LATENCY)


def save(state_dir: Path, network: Network) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / LAB).write_text(json.dumps(asdict(network)))


def load(state_dir: Path) -> Network | None:
    """The lab recorded in `state_dir`, if any."""
    path = state_dir / LAB
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Network(raw["name"], {int(i): rates for i, rates in raw["links"].items()})


@contextmanager
def network(links: dict[int, dict[str, int]], state_dir: Path) -> Iterator[Network]:
    """A lab network (no deployment) recorded in `state_dir`, removed at exit."""
    net = Network(new_name(), links)
    save(state_dir, net)
    try:
        net.create()
        yield net
    finally:
        net.remove()
        (state_dir / LAB).unlink()


def up(state_dir: Path, links: dict[int, dict[str, int]], timeout: float,
       node_env: dict[int, dict[str, str]]) -> int:
    """Create the lab's hosts and links, then local.up's deployment on them; 1 and
    everything removed again on failure."""
    if load(state_dir) or local._our_processes(state_dir):
        local.log(f"a deployment or lab from {state_dir} is up; `lab down` first")
        return 1
    net = Network(new_name(), links)
    save(state_dir, net)  # before anything exists: `down` finds it whatever happens
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        net.create()
        local.log(f"lab {net.name}: " + ", ".join(
            f"{h} {net.netns(h)} {net.address(h)}" for h in net.hosts))
        code = local.up(state_dir, len(links), timeout, node_env, net.deployment_hosts())
    except LabError as err:
        local.log(f"lab up failed: {err}")
        code = 1
    except BaseException:
        down(state_dir)
        raise
    if code:
        down(state_dir)
    return code


def down(state_dir: Path) -> int:
    """local.down, then every host of the lab removed (with its links)."""
    code = local.down(state_dir)
    if (net := load(state_dir)) is not None:
        net.remove()
        (state_dir / LAB).unlink()
        local.log(f"lab {net.name} removed")
    return code


def restart(state_dir: Path, host: str, timeout: float) -> int:
    """Restart `host` (its namespace, links and processes), then its Flower process."""
    net = load(state_dir)
    if net is None or host not in net.hosts:
        local.log(f"restart: {host!r} is not a host of a lab from {state_dir}")
        return 2
    net.reboot(host)
    return local.restart(state_dir, host, timeout)


def set_link(state_dir: Path, host: str, up: bool) -> int:
    net = load(state_dir)
    if net is None or host not in net.hosts[1:]:
        local.log(f"{'restore' if up else 'cut'}: {host!r} is not a node of a lab "
                  f"from {state_dir}")
        return 2
    net.set_link(host, up)
    local.log(f"{host}'s link {'restored' if up else 'cut'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["run"], ["status"]):
        return local.main(argv)  # the state names each host's namespace
    parser = argparse.ArgumentParser(
        prog="deploy/local.sh lab", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Usage"):])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "cut", "restore", "restart", "down", "run", "status"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", type=Path, default=local.default_state_dir())
        if name in ("cut", "restore", "restart"):
            p.add_argument("host", help="node-I" + (" or superlink" if name == "restart" else ""))
        if name in ("up", "restart"):
            p.add_argument("--timeout", type=float, default=300.0)
        if name == "up":
            p.add_argument("--nodes", type=int, default=2)
            p.add_argument("--link", action="append", default=[], metavar="[I:]up=R,down=R")
            p.add_argument("--node-env", action="append", default=[], metavar="I:KEY=VALUE")
    args = parser.parse_args(argv)
    if args.command == "up":
        if not 1 <= args.nodes <= 200:
            parser.error("--nodes must be in 1..200")
        try:
            links = parse_links(args.link, args.nodes)
            node_env = local.parse_node_env(args.node_env, args.nodes)
        except ValueError as err:
            parser.error(str(err))
    if (reason := unavailable()) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    state_dir = args.state_dir.resolve()
    if args.command == "up":
        return up(state_dir, links, args.timeout, node_env)
    if args.command in ("cut", "restore"):
        return set_link(state_dir, args.host, args.command == "restore")
    if args.command == "restart":
        return restart(state_dir, args.host, args.timeout)
    return down(state_dir)


if __name__ == "__main__":
    sys.exit(main())
