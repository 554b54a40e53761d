"""Benchmark: HideNseek and FedPM trained by a user's own loop, against fedmask's app.

The example project (``examples/quickstart-fedmask``, Flower's quickstart
conventions) trains with its own ``train()``: SGD with momentum 0.9 at the run
config's ``lr`` (Flower's template) or Adam. Each loop runs through real ``flwr
run`` simulations, ``--repeats`` times (the project's shuffling is unseeded), and
so does fedmask's own app on the same data and network (FashionMNIST, 2 clients
of 600 training images, every client every round, the same rounds; ``model =
"lenet"``, the example's CNN) with seeds 0..R-1.
It prints, per method and loop, the mean and standard deviation of the last
round's central accuracy and its ratio to fedmask's app's mean.

Usage::

    .venv/bin/python benchmarks/example_loops.py --data-root ../shared/data \\
        --out benchmarks/results/example_loops.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedmask.launch import run_simulation, simulation_superlink

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart-fedmask"
LOOPS = {"sgd lr0.1 m0.9": {"optimizer": "sgd", "learning-rate": 0.1},
         "adam lr1e-3": {"optimizer": "adam", "learning-rate": 0.001}}


def example_run(env: dict[str, str], method: str, loop: dict[str, Any], args: argparse.Namespace,
                out: Path) -> float:
    """The example's last central accuracy with `method` and its `loop`."""
    config = {"strategy": method, "num-server-rounds": args.rounds, "fraction-evaluate": 1.0,
              "batch-size": 32, "local-epochs": 1, "out-dir": str(out), **loop}
    return run_simulation(env, config, 2, app=EXAMPLE, timeout=1800)["rounds"][-1]["accuracy"]


def own_run(env: dict[str, str], method: str, seed: int, args: argparse.Namespace,
            out: Path) -> float:
    """fedmask's app's last central accuracy on the same data, with its own loop."""
    config = {"method": method, "num-server-rounds": args.rounds, "data-root": args.data_root,
              "dataset": "fashion-mnist", "model": "lenet", "partition": "iid",
              "train-limit": 600,
              "fraction-train": 1.0, "fraction-evaluate": 1.0, "batch-size": 32,
              "local-epochs": 1, "seed": seed, "out-dir": str(out)}
    return run_simulation(env, config, 2, timeout=1800)["rounds"][-1]["accuracy"]


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation and the values."""
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["hidenseek", "fedpm"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    # the example reads its data from here (the SuperLink below inherits it)
    os.environ.update({"QUICKSTART_DATA": args.data_root, "QUICKSTART_TRAIN_LIMIT": "600"})
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedmask-loops-") as work, \
            simulation_superlink(Path(work) / "flwr-home") as env:
        runs = iter(range(10**6))
        for method in args.methods:
            own = stats([own_run(env, method, seed, args, Path(work) / f"r{next(runs)}")
                         for seed in range(args.repeats)])
            print(f"{method:10s} fedmask's app         {own['mean']:.4f} +- {own['std']:.4f}",
                  flush=True)
            for name, loop in LOOPS.items():
                user = stats([example_run(env, method, loop, args, Path(work) / f"r{next(runs)}")
                              for _ in range(args.repeats)])
                ratio = user["mean"] / own["mean"]
                print(f"{method:10s} {name:22s} {user['mean']:.4f} +- {user['std']:.4f}  "
                      f"ratio to fedmask's app {ratio:.3f}", flush=True)
                rows.append({"method": method, "loop": name, "example": user, "own": own,
                             "ratio": ratio})
    if args.out:
        args.out.write_text(json.dumps({"rounds": args.rounds, "repeats": args.repeats,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
