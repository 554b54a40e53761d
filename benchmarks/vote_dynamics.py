"""Benchmark: why HideNseek's global signs wander under label skew, round by round.

Runs HideNseek in-process (``loopback.py``: fedmask's server and client code) on
the limited profile under Dirichlet ``--alpha`` with each ``--vote-smoothing``
value, and prints per round what the server measures of the vote
(``results.json``'s train metrics): the central accuracy of the global signs, the
share of global signs the vote flipped, the mean vote margin ``|2p - 1|``, the
share of signs a client flipped against the global ones (mean over the decoded
replies), and the mean local test accuracy of the module each client trained
before the vote (``trained-accuracy``).

Usage::

    .venv/bin/python benchmarks/vote_dynamics.py --data-root ../shared/data \\
        --out benchmarks/results/vote_dynamics.json
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from compare import PROFILES, in_process

METRICS = ("sign-flip-share", "vote-margin", "mask-coded-share", "trained-accuracy")


def run(smoothing: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One federation's rounds: accuracy and the vote's metrics."""
    config = {**PROFILES["limited"]["run_config"], "alpha": args.alpha, "method": "hidenseek",
              "vote-smoothing": smoothing, "num-server-rounds": args.rounds,
              "data-root": args.data_root, "dataset": args.dataset, "seed": args.seed,
              "fraction-evaluate": 0.0}
    results = in_process(config, PROFILES["limited"]["num_supernodes"])
    return [{"round": r["round"], "accuracy": r["accuracy"],
             **{key: r["train_metrics"].get(key) for key in METRICS}}
            for r in results["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vote-smoothing", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    with ProcessPoolExecutor(2) as pool:
        futures = {s: pool.submit(run, s, args) for s in args.vote_smoothing}
        rounds = {s: future.result() for s, future in futures.items()}
    for smoothing, rows in rounds.items():
        print(f"vote-smoothing {smoothing}: round, accuracy, " + ", ".join(METRICS))
        for row in rows:
            print(f"  {row['round']:3d}  {row['accuracy']:.3f}  " + "  ".join(
                f"{row[key]:.3f}" if row[key] is not None else "-" for key in METRICS))
    if args.out:
        args.out.write_text(json.dumps({"alpha": args.alpha, "dataset": args.dataset,
                                        "rounds": {str(s): r for s, r in rounds.items()}},
                                       indent=1))


if __name__ == "__main__":
    main()
