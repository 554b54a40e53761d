"""Benchmark: every method's time on constrained links, in the network lab.

Every method runs with the same small config (compare.py's smoke run config,
FashionMNIST, no client-side evaluation: the accuracy is the server's, on the
central test set) and rounds on `--nodes` SuperNodes of the network lab
(deploy/lab.py), once per link profile, one method after another on one lab per
profile. Each method also runs once as a local simulation of the same config;
every deployed round must have sent exactly the simulation's array bytes (the
methods' payload in the train messages up and down, and in the exchange before
round 1; Flower's framing differs by its ids, see docs/guide/results.md), else the
mismatches are reported in the JSON and the benchmark exits 1.

Per method, profile and round it records the wall time, split into process start
(``start_s`` of the round's slowest node), client compute (its ``client_s``),
the server's aggregation (``aggregate_s``) and transfer (the rest of the round:
the messages on the links, Flower's delivery, the central evaluation); the least
time the link limits allow for the slowest node's bytes (``wire_s``); the
cumulative wall time from round 0 (``initial.wall_s``: SSFL's query and the
initial evaluation) and the time to a target accuracy (`--target`, default
TARGET_SHARE of the baseline's final accuracy in the same profile; the baseline is
the first of `--methods`). It writes OUT (JSON: machine, commit, config,
per-round figures, summaries, the bytes check), OUT with .md (methods x
profiles: s/round, time to target, speedup vs the baseline) and .png (accuracy
against cumulative wall time, one panel per profile).

Profiles: slow (1 mbit/s up, 5 mbit/s down per node), medium (10 / 50),
unlimited (no limiter), or NAME=UP/DOWN with lab rates (e.g. edge=500kbit/2mbit).

Usage (as root)::

    .venv/bin/python benchmarks/edge.py --profiles slow medium unlimited --rounds 3 \\
        --nodes 4 --data-root ../shared/data --out benchmarks/results/edge.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean
from typing import Any

from fedmask.launch import (
    APP,
    exit_on_sigterm,
    overrides,
    run_and_read,
    run_simulation,
    simulation_superlink,
)

from compare import ENTRIES, PROFILES, entry_configs, positive_int

sys.path.insert(0, str(APP / "deploy"))
import lab  # noqa: E402 - deploy/lab.py

LAB = [str(APP / "deploy" / "local.sh"), "lab"]
LINKS = {"slow": {"up": "1mbit", "down": "5mbit"}, "medium": {"up": "10mbit", "down": "50mbit"},
         "unlimited": {}}
BASE = {**PROFILES["smoke"]["run_config"], "fraction-evaluate": 0.0}
# Torch threads of a node's ClientApps: the simulation's (Ray gives an actor of 1 CPU
# OMP_NUM_THREADS=1). A SuperNode's ClientApp otherwise uses every core, and training
# with another thread count rounds differently: HideNseek's round-3 masks of this
# config then differ from the simulation's (measured: 12 bytes of 37,540).
CLIENT_THREADS = 1
TARGET_SHARE = 0.9  # default target: this share of the baseline's final accuracy
MB = 1e6


def _first_variants() -> list[str]:
    """One entry per method (the first of its variants: FedSparsify's global), in
    ENTRIES' order (FedAvg first)."""
    first: dict[str, str] = {}
    for entry, config in ENTRIES.items():
        first.setdefault(config["method"], entry)
    return list(first.values())


METHODS = _first_variants()


def parse_profile(text: str) -> tuple[str, dict[str, int]]:
    """A named profile or NAME=UP/DOWN, as (name, {"up"/"down": bit/s}); ValueError
    naming ``--profiles``."""
    name, eq, rates = text.partition("=")
    if not eq:
        if name not in LINKS:
            raise ValueError(f"--profiles: unknown profile {text!r}: one of {', '.join(LINKS)}"
                             " or NAME=UP/DOWN (e.g. edge=500kbit/2mbit)")
        return name, {key: lab.rate_bits(rate) for key, rate in LINKS[name].items()}
    up, slash, down = rates.partition("/")
    try:
        if not name or not slash:
            raise ValueError(text)
        return name, {"up": lab.rate_bits(up), "down": lab.rate_bits(down)}
    except ValueError:
        raise ValueError(f"--profiles: {text!r} is not NAME=UP/DOWN with UP, DOWN as in "
                         f"{lab.LINK_FORM})") from None


def parse_profiles(texts: list[str]) -> dict[str, dict[str, int]]:
    """Every `--profiles` item parsed (parse_profile); ValueError on a repeated name."""
    profiles = dict(map(parse_profile, texts))
    if len(profiles) != len(texts):
        raise ValueError(f"--profiles: a profile is named twice in {texts}")
    return profiles


def lab_args(links: dict[str, int], nodes: int) -> list[str]:
    """`lab up`'s ``--link`` arguments for every node (none for an unlimited link), and
    ``--node-env`` giving each node's ClientApps CLIENT_THREADS threads."""
    threads = [arg for i in range(nodes)
               for arg in ("--node-env", f"{i}:OMP_NUM_THREADS={CLIENT_THREADS}")]
    return (["--link", ",".join(f"{k}={v}bit" for k, v in links.items())] if links
            else []) + threads


def slowest(record: dict[str, Any]) -> dict[str, Any] | None:
    """The round's answered node that took longest from process start to reply."""
    done = [c for c in record["clients"] if not c["failed"]]
    for client in done:
        if client["start_s"] is None:
            raise ValueError(f"round {record['round']}: node {client['node_id']} has no "
                             "start_s (not a deployed run?)")
    return max(done, key=lambda c: c["start_s"] + c["client_s"], default=None)


def wire_s(client: dict[str, Any], links: dict[str, int]) -> float:
    """Least seconds `links` allow for `client`'s bytes (0 for unlimited directions)."""
    return sum(8 * client[f"bytes_{d}"] / links[d] for d in ("up", "down") if d in links)


def split(record: dict[str, Any], links: dict[str, int]) -> dict[str, float]:
    """A round's wall time split by its slowest node: process start, compute, server
    aggregation, transfer (the rest), and the link limits' ``wire_s`` for its bytes."""
    node = slowest(record)
    start, compute = (node["start_s"], node["client_s"]) if node else (0.0, 0.0)
    transfer = record["wall_s"] - start - compute - record["aggregate_s"]
    return {"start_s": start, "compute_s": compute, "server_s": record["aggregate_s"],
            "transfer_s": transfer, "wire_s": wire_s(node, links) if node else 0.0}


def per_round(results: dict[str, Any], links: dict[str, int]) -> list[dict[str, Any]]:
    """Each round's accuracy, bytes, wall time, split and cumulative wall time (from
    the start of round 0)."""
    elapsed = results["initial"]["wall_s"]
    rows = []
    for record in results["rounds"]:
        elapsed += record["wall_s"]
        rows.append({"round": record["round"], "accuracy": record["accuracy"],
                     "bytes_up": record["bytes_up"], "bytes_down": record["bytes_down"],
                     "wall_s": record["wall_s"], **split(record, links), "elapsed_s": elapsed})
    return rows


def time_to_target(results: dict[str, Any], rows: list[dict[str, Any]],
                   target: float) -> float | None:
    """Cumulative wall time when the accuracy first reached `target` (0 rounds: the
    initial model's), None if it never did."""
    if results["initial"]["accuracy"] >= target:
        return results["initial"]["wall_s"]
    return next((r["elapsed_s"] for r in rows if r["accuracy"] >= target), None)


PAYLOAD = ("array_bytes_up", "array_bytes_down")


def payload_bytes(results: dict[str, Any]) -> list[dict[str, int]]:
    """Array bytes up and down (the methods' payload, see docs/guide/results.md) of
    round 0 (the exchange before round 1, if any) and of every round."""
    return [{key: record[key] for key in PAYLOAD}
            for record in [results["initial"], *results["rounds"]]]


def bytes_mismatches(sim: dict[str, Any], dep: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a deployed run's array bytes differ from the simulation's: round 0 and
    every round, up and down."""
    if len(sim["rounds"]) != len(dep["rounds"]):
        return [{"round": None, "field": "rounds", "simulation": len(sim["rounds"]),
                 "deployed": len(dep["rounds"])}]
    pairs = zip(payload_bytes(sim), payload_bytes(dep))
    return [{"round": rnd, "field": key, "simulation": s[key], "deployed": d[key]}
            for rnd, (s, d) in enumerate(pairs) for key in PAYLOAD if s[key] != d[key]]


def total_mb(results: dict[str, Any]) -> float:
    """MB of the whole train messages (and round 0's), up and down."""
    return sum(r["bytes_up"] + r["bytes_down"]
               for r in [results["initial"], *results["rounds"]]) / MB


def summary(runs: dict[str, dict[str, Any]], links: dict[str, int],
            target: float | None) -> dict[str, dict[str, Any]]:
    """Per method of one profile: rounds, mean split, time to target and speedups
    against the first method (the baseline), whose final accuracy times TARGET_SHARE
    is the target when `target` is None."""
    rows = {m: per_round(results, links) for m, results in runs.items()}
    base = next(iter(rows))
    goal = target if target is not None else TARGET_SHARE * rows[base][-1]["accuracy"]
    out = {}
    for method, results in runs.items():
        keys = ("wall_s", "start_s", "compute_s", "transfer_s", "server_s", "wire_s")
        out[method] = {"target": goal, "initial_s": results["initial"]["wall_s"],
                       **{k: mean(r[k] for r in rows[method]) for k in keys},
                       "accuracy": rows[method][-1]["accuracy"], "mb": total_mb(results),
                       "time_to_target_s": time_to_target(results, rows[method], goal),
                       "rounds": rows[method]}
    for row in out.values():
        reached = row["time_to_target_s"], out[base]["time_to_target_s"]
        row["speedup"] = reached[1] / reached[0] if None not in reached else None
        row["round_speedup"] = out[base]["wall_s"] / row["wall_s"]
    return out


def _time(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f} s"


def markdown(profiles: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Methods x profiles: s/round, time to target and its speedup vs the baseline."""
    names = list(profiles)
    methods = list(next(iter(profiles.values())))
    head = "| method | " + " | ".join(f"{p}: s/round | {p}: to target | {p}: speedup"
                                      for p in names) + " |"
    lines = [head, "|---" * (1 + 3 * len(names)) + "|"]
    for method in methods:
        cells = []
        for name in names:
            row = profiles[name][method]
            speedup = "" if row["speedup"] is None else f"{row['speedup']:.2f}x"
            cells += [f"{row['wall_s']:.1f}", _time(row["time_to_target_s"]), speedup]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    targets = ", ".join(f"{p} {next(iter(s.values()))['target']:.4f}"
                        for p, s in profiles.items())
    return "\n".join(lines) + f"\n\nTarget accuracy: {targets}; speedup: the baseline " \
        f"({methods[0]})'s time to target / the method's.\n"


def plot(profiles: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Accuracy against cumulative wall time, one panel per profile."""
    import matplotlib  # noqa: PLC0415 - only the plotting needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4.5),
                             squeeze=False, sharey=True)
    for ax, (name, methods) in zip(axes[0], profiles.items()):
        for method, row in methods.items():
            rounds = row["rounds"]
            ax.plot([r["elapsed_s"] for r in rounds], [r["accuracy"] for r in rounds],
                    marker=".", label=method)
        ax.axhline(next(iter(methods.values()))["target"], color="grey", lw=0.8, ls="--")
        ax.set(title=name, xlabel="cumulative wall time (s)")
    axes[0][0].set(ylabel="central accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@contextmanager
def lab_up(nodes: int, links: dict[str, int], state: Path) -> Iterator[Path]:
    """A lab of `nodes` SuperNodes, every link limited by `links`; down at exit."""
    try:
        up = subprocess.run([*LAB, "up", "--nodes", str(nodes), "--state-dir", str(state),
                             *lab_args(links, nodes)], capture_output=True, text=True, check=False)
        if up.returncode != 0:
            raise RuntimeError(f"lab up failed ({up.returncode}):\n{up.stderr[-3000:]}")
        yield state
    finally:
        subprocess.run([*LAB, "down", "--state-dir", str(state)], check=False,
                       capture_output=True)


def in_lab(configs: dict[str, dict[str, Any]], nodes: int, links: dict[str, int],
           work: Path) -> dict[str, dict[str, Any]]:
    """Every config's results.json, run one after another on one lab."""
    runs = {}
    with lab_up(nodes, links, work / "state") as state:
        for method, config in configs.items():
            config = {**config, "out-dir": str(work / method)}
            cmd = [*LAB, "run", "--state-dir", str(state), "--run-config", overrides(config)]
            runs[method] = run_and_read(cmd, dict(os.environ), config["out-dir"])
            print(f"  {method:20s} {runs[method]['rounds'][-1]['accuracy']:.4f}", flush=True)
    return runs


def simulated(configs: dict[str, dict[str, Any]], nodes: int,
              work: Path) -> dict[str, dict[str, Any]]:
    """Every config's results.json from a local simulation of `nodes` nodes."""
    with simulation_superlink(work / "flwr-home") as env:
        return {m: run_simulation(env, {**c, "out-dir": str(work / m)}, nodes)
                for m, c in configs.items()}


def machine() -> dict[str, Any]:
    """Where it ran: host, CPU, cores, Python, and the commit (``+dirty`` if changed)."""
    git = ["git", "-C", str(APP)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else "")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=list(ENTRIES),
                        help="entries to run; the first is the baseline")
    parser.add_argument("--profiles", nargs="+", default=list(LINKS),
                        help="slow, medium, unlimited or NAME=UP/DOWN (lab rates)")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--nodes", type=positive_int, default=4)
    parser.add_argument("--target", type=float,
                        help=f"target accuracy (default: {TARGET_SHARE} x the baseline's "
                             "final accuracy in each profile)")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge.json"),
                        help="writes OUT, and OUT with .md and .png")
    args = parser.parse_args(argv)
    try:
        args.links = parse_profiles(args.profiles)
    except ValueError as err:
        parser.error(str(err))
    if args.target is not None and not 0 < args.target <= 1:
        parser.error(f"--target: must be an accuracy in (0, 1], got {args.target}")
    if (reason := lab.unavailable()) is not None:
        parser.error(reason)
    return args


def measure(args: argparse.Namespace, configs: dict[str, dict[str, Any]], work: Path
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every profile's summaries, and the bytes check against the simulation (its
    mismatches, and the simulation's whole messages in MB beside the deployed runs')."""
    print(f"simulation: {', '.join(configs)}", flush=True)
    sim = simulated(configs, args.nodes, work / "sim")
    profiles, mismatches = {}, []
    for name, links in args.links.items():
        print(f"profile {name}: {links or 'unlimited'}", flush=True)
        runs = in_lab(configs, args.nodes, links, work / name)
        profiles[name] = summary(runs, links, args.target)
        mismatches += [{"profile": name, "method": m, **x} for m in runs
                       for x in bytes_mismatches(sim[m], runs[m])]
    return profiles, {"equal": not mismatches, "mismatches": mismatches,
                      "simulation_mb": {m: total_mb(r) for m, r in sim.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    run_config = {**BASE, "data-root": str(args.data_root.resolve()),
                  "num-server-rounds": args.rounds, "min-nodes": args.nodes}
    configs = entry_configs(PROFILES["smoke"], args.methods, run_config)
    with tempfile.TemporaryDirectory(prefix="fedmask-edge-") as work:
        profiles, check = measure(args, configs, Path(work))
    table = markdown(profiles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"machine": machine(), "nodes": args.nodes, "rounds": args.rounds,
         "links": args.links, "config": configs,
         "bytes_check": check,
         "profiles": profiles}, indent=2))
    args.out.with_suffix(".md").write_text(table)
    plot(profiles, args.out.with_suffix(".png"))
    print(f"\n{table}\nwritten: {args.out}, .md, .png")
    if not check["equal"]:
        print(f"error: {len(check['mismatches'])} deployed round(s) differ in array bytes "
              f"from the simulation (see bytes_check in {args.out})", file=sys.stderr)
    return 0 if check["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
