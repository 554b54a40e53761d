"""Benchmark: per-round wall time of a real SuperLink/SuperNode deployment vs simulation.

Runs the same HideNseek configuration (same seed, nodes, rounds) once in Flower's
simulation (Ray backend) and once on `deploy/local.sh` (TLS SuperLink with SuperNode
authentication, real SuperNodes on 127.0.0.1), prints each round's ``wall_s`` from
the two results.json files, the per-round overhead and whether the final global
masks are identical, and writes the figures as JSON.

Usage::

    .venv/bin/python benchmarks/deploy_overhead.py --nodes 3 --rounds 3 \\
        --data-root ../shared/data --out benchmarks/results/deploy_overhead.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, required=True)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": base, "nodes": args.nodes, "rounds": rows,
                                    "ratio": ratio, "same_final_mask": same}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
