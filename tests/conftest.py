"""Shared fixtures: Flower message plumbing for strategy tests, a simulation SuperLink,
and what the real runs' processes listen on."""

import contextlib
import functools
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.data import DataLoader, TensorDataset
from xdist.scheduler import LoadScopeScheduling

from fedmask.client import node as client_node
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import ClientData
from fedmask.launch import overrides, run_simulation, simulation_superlink
from fedmask.nn.models import build_model
from fedmask.server.checkpoint import CHECKPOINT, load

ROOT = Path(__file__).resolve().parents[1]
LAB_MODULE = str(ROOT / "deploy" / "lab.py")  # tests that import it: NETWORK_LAB
FOOTPRINT = pytest.StashKey[dict]()
DATA_ROOT = os.environ.get("FEDMASK_TEST_DATA", str(ROOT.parent / "shared" / "data"))
# The suite never reaches the Hugging Face hub (its datasets are local folders); every
# process it starts inherits this.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The example project (examples/quickstart-fedmask) reads its data from here, 600
# training images per node.
os.environ.setdefault("QUICKSTART_DATA", DATA_ROOT)
os.environ.setdefault("QUICKSTART_TRAIN_LIMIT", "600")
# Under pytest-xdist (./test.sh runs a worker per core) each worker, and every process
# it starts, computes on one thread (unless OMP_NUM_THREADS says otherwise): two
# workers each spinning an OpenMP thread per core would slow each other down.
XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))  # set by xdist in its workers
if XDIST_WORKER:
    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402 - benchmarks/compare.py

# A small real run: compare.py's smoke profile (3 nodes, 2 rounds, 400 training
# images per node); the suite's simulations and the smoke comparison share it.
SMOKE = compare.PROFILES["smoke"]
SMALL = {**SMOKE["run_config"], "data-root": DATA_ROOT, "num-server-rounds": SMOKE["rounds"]}
SMALL_NODES = SMOKE["num_supernodes"]


# Modules that share a pytest-xdist worker (./test.sh runs two): those reading the
# session's smoke runs, its MPFL run or test_deploy.py's deployment (SHARED_FIXTURES;
# test_listening.py checks what they listened on; a test that needs only a simulation
# SuperLink gets its worker's own), and those that make network namespaces (their
# tests compare the namespaces before and after). Every other module is a unit of its
# own. The longest units (by `pytest --durations=0 -n 2`) start first, and the shorter
# ones fill in behind them.
SHARED_RUNS = {"test_compare", "test_deploy", "test_listening", "test_loopback",
               "test_model_file", "test_simulation"}
NETWORK_LAB = {"test_lab", "test_ray_cluster"}
SHARED_FIXTURES = {"smoke", "mpfl", "deployment_sockets"}
LONGEST_FIRST = ("shared-runs", "test_example_app", "test_deploy_faults", "network-lab")


def worker_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module's group, or its module."""
    module = Path(nodeid.split("::")[0]).stem
    return ("shared-runs" if module in SHARED_RUNS
            else "network-lab" if module in NETWORK_LAB else module)


class SharedRunScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with `worker_unit` as the scope, longest units first."""

    def _split_scope(self, nodeid: str) -> str:
        return worker_unit(nodeid)

    ordered = False  # the queue, complete before the first assignment, sorted once

    def _assign_work_unit(self, node) -> None:
        if not self.ordered:
            for unit in reversed(LONGEST_FIRST):
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            self.ordered = True
        super()._assign_work_unit(node)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> SharedRunScheduling:
    return SharedRunScheduling(config, log)


def uses_network_lab(item: pytest.Item) -> bool:
    """Whether the test's module imports deploy/lab.py (it makes network namespaces)."""
    module = getattr(item, "module", None)
    return module is not None and any(getattr(value, "__file__", None) == LAB_MODULE
                                      for value in vars(module).values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs real Flower (a SuperLink, `flwr run`, a deployment) is
    ``integration``, as are those marked so by hand (a whole federated run
    in-process); the rest are unit tests (``pytest -m "not integration"``). A test
    that reads the session's shared runs must live in a SHARED_RUNS module, one
    that uses the network lab in a NETWORK_LAB module."""
    strays, lab_strays = [], []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if {"superlink", "smoke", "deployment", "deployment_sockets"} & fixtures:
            item.add_marker(pytest.mark.integration)
        if SHARED_FIXTURES & fixtures and worker_unit(item.nodeid) != "shared-runs":
            strays.append(item.nodeid)
        if uses_network_lab(item) and worker_unit(item.nodeid) != "network-lab":
            lab_strays.append(item.nodeid)
    if strays:
        raise pytest.UsageError(f"{strays} read the session's shared runs: add their "
                                "modules to SHARED_RUNS in tests/conftest.py")
    if lab_strays:
        raise pytest.UsageError(f"{lab_strays} make network namespaces: add their modules "
                                "to NETWORK_LAB in tests/conftest.py")


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8 and ::1, also written as IPv4-mapped IPv6 (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def process_label(cmdline: list[str]) -> str:
    """The program of a command line, past the Python interpreter and its options
    (``flwr-simulation``, ``gcs_server``, ``ray::ClientAppActor``)."""
    for word in cmdline:
        name = Path(word).name.strip()
        if name and not name.startswith(("python", "-")):
            return name
    return "?"


def node_addresses(cmdline: list[str]) -> set[str]:
    """The Ray node addresses a command line passes (``--node-ip-address=...``)."""
    return {word.split("=", 1)[1] for word in cmdline
            if word.startswith(("--node-ip-address=", "--node_ip_address="))}


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket and its process."""

    process: str
    pid: int
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port} {self.process} (PID {self.pid})"


@dataclass
class ListenWatch:
    """What the processes under some PIDs listened on, polled while `watching`."""

    listeners: set[Listener] = field(default_factory=set)
    processes: set[str] = field(default_factory=set)
    node_addresses: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def watching(self, roots: Callable[[], list[int]], every: float = 1.0) -> Iterator[None]:
        """Poll the trees of the PIDs `roots()` gives every `every` s in a thread."""
        stop = threading.Event()
        thread = threading.Thread(target=self._poll, args=(roots, every, stop), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _poll(self, roots: Callable[[], list[int]], every: float, stop: threading.Event
              ) -> None:
        while not stop.wait(every):
            for pid in roots():
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        self._record(proc)

    def _record(self, proc: psutil.Process) -> None:
        try:
            cmdline = proc.cmdline()
            sockets = proc.net_connections(kind="tcp")
        except psutil.Error:
            return
        label = process_label(cmdline)
        with self.lock:
            self.processes.add(label)
            self.node_addresses |= node_addresses(cmdline)
            self.listeners |= {Listener(label, proc.pid, s.laddr.ip, s.laddr.port)
                               for s in sockets if s.status == psutil.CONN_LISTEN}

    def seen(self) -> tuple[set[Listener], set[str], set[str]]:
        """Copies of (listeners, process labels, Ray node addresses) so far."""
        with self.lock:
            return set(self.listeners), set(self.processes), set(self.node_addresses)


DEPLOY = str(ROOT / "deploy" / "local.sh")


def deployment_pids(state: Path) -> list[int]:
    """PIDs `deploy/local.sh` recorded in `state` so far."""
    path = state / "pids.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["pid"] for line in lines if line.strip()]


LAB = (DEPLOY, "lab")  # deploy/lab.py: every process on a host (network namespace) of its own


@contextlib.contextmanager
def deployed(state: Path, nodes: int, node_env: tuple[str, ...] = (),
             watch: ListenWatch | None = None, links: tuple[str, ...] | None = None
             ) -> Iterator[Path]:
    """`deploy/local.sh up` with `nodes` SuperNodes in `state` (`node_env`: its
    ``--node-env`` items), its processes polled by `watch` if given; with `links`
    (``--link`` items) `local.sh lab up` instead; `down` afterwards, even when the
    test failed (checking that everything stopped)."""
    watching = (watch.watching(functools.partial(deployment_pids, state)) if watch
                else contextlib.nullcontext())
    tool = (DEPLOY,) if links is None else LAB
    try:
        with watching:
            extra = [arg for item in node_env for arg in ("--node-env", item)]
            extra += [arg for item in links or () for arg in ("--link", item)]
            up = subprocess.run([*tool, "up", "--nodes", str(nodes), "--state-dir",
                                 str(state), *extra], capture_output=True, text=True,
                                timeout=600)
            assert up.returncode == 0, up.stderr[-4000:]
            assert up.stdout.strip() == "fedmask"
            yield state
    finally:
        down = subprocess.run([*tool, "down", "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr[-2000:]


T = TypeVar("T")
# A deployed run with faults: HideNseek, rounds end at the deadline with whoever answered.
# The deadline is one a busy 2-core machine still meets: every message starts a
# ClientApp process (imports: ~7 s of CPU); at 40 s, CI once saw both healthy nodes
# miss it in the same round while the other worker computed.
TIMEOUT_S = 60.0
FAULT = {**SMALL, "method": "hidenseek", "fraction-evaluate": 0.0, "min-nodes": 1,
         "round-timeout-s": TIMEOUT_S}


def deployment_state(deployment: Path) -> dict[str, Any]:
    """The state.json of the deployment in `deployment`."""
    return json.loads((deployment / "state.json").read_text())


def start_run(deployment: Path, out: Path, config: dict[str, Any], app: Path = ROOT,
              tool: tuple[str, ...] = (DEPLOY,)) -> subprocess.Popen:
    """`local.sh run` (or `tool`'s run) of `app` in the background, its output in
    out/run.log."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "ab") as log:
        return subprocess.Popen([*tool, "run", "--app", str(app), "--state-dir",
                                 str(deployment), "--run-config",
                                 overrides({**config, "out-dir": str(out)})],
                                stdout=log, stderr=subprocess.STDOUT)


def finish_run(run: subprocess.Popen, out: Path, timeout: float = 600) -> dict[str, Any]:
    code = run.wait(timeout=timeout)
    assert code == 0, (out / "run.log").read_text()[-4000:]
    return json.loads((out / "results.json").read_text())


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if entry.name.isdigit():
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(
                int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def cmdlines() -> dict[int, str]:
    """The command line of every live process (words joined by spaces)."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit():
                raw = (entry / "cmdline").read_bytes()
                found[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


def clientapps(node_pid: int) -> list[int]:
    """The `flwr-clientapp` processes SuperNode `node_pid` runs now."""
    running = cmdlines()
    return [pid for pid in descendants(node_pid) if "flwr-clientapp" in running.get(pid, "")]


def checkpoint_round(out: Path) -> int:
    return load(out / CHECKPOINT).server_round if (out / CHECKPOINT).exists() else 0


def trained(record: dict[str, Any], node_id: str) -> bool:
    return any(str(c["node_id"]) == node_id and not c["failed"] for c in record["clients"])


def netns_inode(pid_or_name: int | str) -> int:
    """The inode of the network namespace process `pid_or_name` runs in, or of the
    namespace named so (``ip netns``)."""
    return os.stat(f"/proc/{pid_or_name}/ns/net" if isinstance(pid_or_name, int)
                   else f"/run/netns/{pid_or_name}").st_ino


def netns_and_links() -> tuple[set[str], set[str]]:
    """The named network namespaces (``ip netns list``) and this namespace's links."""
    names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return names, set(os.listdir("/sys/class/net"))


def network_footprint() -> dict[str, dict[Any, str]]:
    """Named network namespaces, this namespace's links, and every network namespace
    a process runs in (inode: that process), to compare at the session's end."""
    names, links = netns_and_links()
    spaces: dict[Any, str] = {}
    for pid, cmdline in cmdlines().items():
        with contextlib.suppress(OSError):
            spaces.setdefault(netns_inode(pid), f"PID {pid}: {cmdline[:120]}")
    return {"network namespace": {name: name for name in names},
            "link": {name: name for name in links},
            "process in a new network namespace": spaces}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not XDIST_WORKER:  # the controller, before any worker starts
        session.config.stash[FOOTPRINT] = network_footprint()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session if it left a network namespace, a link or a process in a
    network namespace behind (the network lab's, deploy/lab.py); under xdist, checked
    by the controller once every worker has ended."""
    if XDIST_WORKER:
        return
    before, after = session.config.stash[FOOTPRINT], network_footprint()
    left = [f"{kind}: {what}" for kind, found in after.items()
            for key, what in found.items() if key not in before[kind]]
    if left:
        print("\nleft behind by this session:\n  " + "\n  ".join(left), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def simulation_sockets() -> ListenWatch:
    """What the processes under the `superlink` fixture's SuperLink listened on."""
    return ListenWatch()


@pytest.fixture(scope="session")
def deployment_sockets() -> ListenWatch:
    """What the processes of test_deploy.py's deployment listened on."""
    return ListenWatch()


@pytest.fixture(scope="session")
def superlink(tmp_path_factory, simulation_sockets):
    """Env of a simulation SuperLink shared by every real `flwr run` test, its process
    tree watched by `simulation_sockets`; stopped at the end."""
    home = tmp_path_factory.mktemp("flwr-home")
    with simulation_superlink(home) as env, simulation_sockets.watching(
            lambda: [int((home / "superlink.pid").read_text())]):
        yield env


@dataclass
class Smoke:
    """compare.py's smoke profile, run once: each entry's run and the progress lines
    it said."""

    runs: dict[str, compare.EntryRun]
    progress: list[str]

    @property
    def results(self) -> dict[str, dict]:
        """Each entry's results.json."""
        return {entry: run.results for entry, run in self.runs.items()}


# The smoke entries run through real `flwr run`: HideNseek and FedAvg, the runs the
# deployment, loopback and uplink tests compare against. The others run in-process
# (`compare.in_process`), which saves a Ray start each; every method also runs through
# `flwr run` in test_example_app.py.
SMOKE_FLWR_RUN = ("hidenseek", "fedavg")


@pytest.fixture(scope="session")
def smoke(superlink, tmp_path_factory):
    """Every compare.py entry on the smoke profile (= SMALL): SMOKE_FLWR_RUN through
    real `flwr run`, two at a time, then the others in-process, one at a time."""
    progress: list[str] = []
    configs = compare.entry_configs(SMOKE, list(compare.ENTRIES),
                                    {**SMOKE["run_config"], "data-root": DATA_ROOT})
    work = tmp_path_factory.mktemp("smoke")
    runs = compare.run_all(functools.partial(run_simulation, superlink),
                           {e: c for e, c in configs.items() if e in SMOKE_FLWR_RUN},
                           SMOKE["rounds"], SMALL_NODES, work, progress.append, SMOKE["parallel"])
    runs |= compare.run_all(compare.in_process,
                            {e: c for e, c in configs.items() if e not in SMOKE_FLWR_RUN},
                            SMOKE["rounds"], SMALL_NODES, work, progress.append)
    return Smoke({entry: runs[entry] for entry in configs}, progress)


def small_simulation(env, tmp_path_factory, **config):
    """results.json of a SMALL simulation run with `config` on top."""
    out = tmp_path_factory.mktemp(config["method"])
    return run_simulation(env, {**SMALL, **config, "out-dir": str(out)}, SMALL_NODES,
                          timeout=600)


# MPFL for 4 rounds: two vote rounds, then masked FedAvg (stateful server and nodes).
MPFL_SMALL = {"method": "mpfl", "density": 0.5, "prune-rate": 0.3, "num-server-rounds": 4}


@pytest.fixture(scope="session")
def mpfl():
    """The SMALL MPFL run, in-process (`compare.in_process`; MPFL's votes and masked
    FedAvg also run through `flwr run` in test_example_app.py)."""
    return compare.in_process({**SMALL, **MPFL_SMALL}, SMALL_NODES)


@pytest.fixture(scope="session")
def hidenseek(smoke):
    """The SMALL HideNseek simulation (the smoke entry; also used by the determinism
    and deployment tests)."""
    return smoke.results["hidenseek"]


@pytest.fixture(autouse=True)
def task_identity():
    """Let code under test create Messages as a ServerApp would."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = None, None, None


def _metadata(node: int, message_type: str) -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id="1", created_at=time.time(),
                    ttl=3600.0, message_type=message_type)


@pytest.fixture
def client_reply():
    """Factory: a reply from `node` carrying `content` (or an error if content is None)."""
    def make(content: RecordDict | None, node: int = 1,
             message_type: str = MessageType.TRAIN) -> Message:
        if content is None:
            return make_message(_metadata(node, message_type), error=Error(1, "boom"))
        return make_message(_metadata(node, message_type), content=content)
    return make


class FakeGrid:
    """The one Grid method a strategy's configure_* calls: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


class LoopbackGrid(FakeGrid):
    """A Grid whose nodes are answered in-process by fedmask's client handlers
    (``fedmask.client.node``), each node with its own state and seeded torch; their
    ``cnn`` has a bias in its output layer with `output_bias` (HideNseek's offsets)."""

    def __init__(self, method: str, nodes: list[int], output_bias: bool = False) -> None:
        super().__init__(nodes)
        self.method, self.output_bias = method, output_bias
        self.states = {node: RecordDict() for node in nodes}

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = f"m{node}"
            server_round = int(msg.content.config_records["config"].get("server-round", 0))
            torch.manual_seed(1000 * server_round + node)
            handler = client_node.HANDLERS[msg.metadata.message_type]
            reply = handler(msg, build_model("cnn", 10, 1, 12, output_bias=self.output_bias),
                            tiny_client_data(), self.states[node])
            replies.append(make_message(_metadata(node, msg.metadata.message_type),
                                        content=reply.content))
        return replies


def sent_messages(strategy, server_round: int, nodes=(21, 22), kind: str = "train"
                  ) -> list[Message]:
    """What `strategy` sends to `nodes` in `server_round` (``train`` or ``evaluate``),
    with message ids set as the SuperLink would, ready for a client handler."""
    config = LocalSettings(local_epochs=1, lr=0.05).to_config()
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    messages = list(configure(server_round, strategy.global_arrays(), ConfigRecord(config),
                              FakeGrid(list(nodes))))
    for msg in messages:
        msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
    return messages


def tiny_client_data() -> ClientData:
    """64 random 1x12x12 images with labels, as both train and test split."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 12, 12, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return ClientData(train=loader, test=loader, num_train=64, num_test=64,
                      label_counts=torch.bincount(y))

