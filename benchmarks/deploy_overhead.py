"""Benchmark: per-round wall time of a real SuperLink/SuperNode deployment vs simulation.

Runs the same HideNseek configuration (same seed, nodes, rounds) once in Flower's
simulation (Ray backend) and once on `deploy/local.sh` (TLS SuperLink with SuperNode
authentication, real SuperNodes on 127.0.0.1), prints each round's ``wall_s`` from
the two results.json files, the per-round overhead and whether the final global
masks are identical, and writes the figures as JSON.

It also measures what a SuperNode's per-message ClientApp process spends before it
trains: each deployed reply's ``start_s`` (process start to first training step)
against a fresh ``python -c "import torch"`` and ``python -c "import client_app"``
in the same run, both timed alone and `nodes` at once (the SuperNodes start their
processes together on this machine's cores).

Usage::

    .venv/bin/python benchmarks/deploy_overhead.py --nodes 3 --rounds 3 \\
        --data-root ../shared/data --out benchmarks/results/deploy_overhead.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, median
from typing import Any

from fedmask.client import startup
from fedmask.launch import APP, overrides, run_and_read, run_simulation, simulation_superlink

DEPLOY = str(APP / "deploy" / "local.sh")


def deployed(config: dict[str, Any], nodes: int, state: Path) -> dict[str, Any]:
    """results.json of `config` run on a fresh deploy/local.sh deployment (then stopped)."""
    try:
        subprocess.run([DEPLOY, "up", "--nodes", str(nodes), "--state-dir", str(state)],
                       check=True, capture_output=True, text=True)
        cmd = [DEPLOY, "run", "--state-dir", str(state), "--run-config", overrides(config)]
        return run_and_read(cmd, None, config["out-dir"])
    finally:
        subprocess.run([DEPLOY, "down", "--state-dir", str(state)], check=False)


def wall_s(code: str, at_once: int, repeats: int) -> float:
    """Median seconds of `at_once` fresh ``python -c code`` processes started together
    (in the app's folder), over `repeats` tries."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=APP) for _ in range(at_once)]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"python -c {code!r} failed")
        times.append(time.perf_counter() - start)
    return median(times)


# What a ClientApp process does before training, outside Flower's protocol: marks of
# the process's age (seconds) after the interpreter, the imports, the node's data and
# the seeded model.
PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("startup", sys.argv[3])  # not its package's imports
startup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(startup)
process_age_s = startup.process_age_s
marks = {"interpreter": process_age_s()}
import client_app
marks["imports"] = process_age_s()
from fedmask import config
from fedmask.client.node import node_data
from fedmask.data.datasets import get_spec
from fedmask.nn.models import build_model
from fedmask.nn.seeded import seeded_init
cfg = config.parse(json.loads(sys.argv[1]))
node_data(cfg, {"partition-id": 0, "num-partitions": int(sys.argv[2])})
marks["data"] = process_age_s()
spec = get_spec(cfg["dataset"])
model = build_model(cfg["model"], spec.num_classes, spec.in_channels, spec.image_size)
seeded_init(model, cfg["seed"], "kaiming-normal")
marks["model"] = process_age_s()
print(json.dumps(marks))
"""


def probe_marks(config: dict[str, Any], nodes: int, repeats: int) -> dict[str, float]:
    """Median :data:`PROBE` marks over `repeats` tries of `nodes` probes at once."""
    runs = []
    for _ in range(repeats):
        procs = [subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(config), str(nodes),
                                   startup.__file__], cwd=APP, stdout=subprocess.PIPE, text=True)
                 for _ in range(nodes)]
        runs += [json.loads(p.communicate()[0]) for p in procs]
    return {key: median(run[key] for run in runs) for key in runs[0]}


def start_costs(dep: dict[str, Any], nodes: int, repeats: int) -> dict[str, Any]:
    """The deployed replies' ``start_s`` against fresh imports of torch and of the
    ClientApp module, alone and `nodes` at once."""
    starts = [c["start_s"] for r in dep["rounds"] for c in r["clients"] if not c["failed"]]
    if None in starts or not starts:
        raise RuntimeError("a deployed reply did not report start_s")
    out: dict[str, Any] = {"start_s": median(starts), "start_s_all": starts}
    for name, code in (("import_torch_s", "import torch"), ("import_app_s", "import client_app")):
        out[name] = wall_s(code, 1, repeats)
        out[f"{name}_{nodes}_at_once"] = wall_s(code, nodes, repeats)
    out["ratio"] = out["start_s"] / out[f"import_torch_s_{nodes}_at_once"]
    marks = probe_marks(dep["config"], nodes, repeats)
    out["before_training_s"] = {**marks, "flower": out["start_s"] - marks["model"]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5, help="tries of each import timing")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/deploy_overhead.json"))
    args = parser.parse_args(argv)
    base = {"method": "hidenseek", "data-root": str(args.data_root.resolve()),
            "num-server-rounds": args.rounds, "train-limit": args.train_limit,
            "fraction-evaluate": 1.0, "min-nodes": args.nodes}
    with tempfile.TemporaryDirectory(prefix="fedmask-overhead-") as work:
        work = Path(work)
        with simulation_superlink(work / "flwr-home") as env:
            sim = run_simulation(env, {**base, "out-dir": str(work / "sim")}, args.nodes)
        dep = deployed({**base, "out-dir": str(work / "dep")}, args.nodes, work / "state")
    rows = [{"round": s["round"], "simulation_s": s["wall_s"], "deployment_s": d["wall_s"],
             "overhead_s": d["wall_s"] - s["wall_s"]}
            for s, d in zip(sim["rounds"], dep["rounds"])]
    same = sim["final_arrays_sha256"] == dep["final_arrays_sha256"]
    print(f"{'round':>5s} {'simulation s':>13s} {'deployment s':>13s} {'overhead s':>11s}")
    for row in rows:
        print(f"{row['round']:5d} {row['simulation_s']:13.1f} {row['deployment_s']:13.1f} "
              f"{row['overhead_s']:11.1f}")
    ratio = mean(r["deployment_s"] for r in rows) / mean(r["simulation_s"] for r in rows)
    print(f"mean per round: deployment / simulation = {ratio:.2f}; "
          f"same final global mask: {same}")
    start = start_costs(dep, args.nodes, args.repeats)
    print(f"ClientApp process start to first training step: median {start['start_s']:.2f} s; "
          f"python -c 'import torch' {start['import_torch_s']:.2f} s alone, "
          f"{start[f'import_torch_s_{args.nodes}_at_once']:.2f} s {args.nodes} at once; "
          f"'import client_app' {start['import_app_s']:.2f} s alone, "
          f"{start[f'import_app_s_{args.nodes}_at_once']:.2f} s {args.nodes} at once; "
          f"start / import torch ({args.nodes} at once) = {start['ratio']:.2f}")
    marks = start["before_training_s"]
    print(f"  of which (process age, {args.nodes} at once): interpreter "
          f"{marks['interpreter']:.2f} s, imports (torch, flwr, fedmask) {marks['imports']:.2f}"
          f" s, data {marks['data'] - marks['imports']:.2f} s, model and seeded weights "
          f"{marks['model'] - marks['data']:.2f} s; the rest, {marks['flower']:.2f} s, is "
          f"Flower's ClientApp start (connecting, pulling the message and the app)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": base, "nodes": args.nodes, "rounds": rows,
                                    "ratio": ratio, "same_final_mask": same,
                                    "clientapp_start": start}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
