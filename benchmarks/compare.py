"""Benchmark: methods side by side on one configuration, through real Flower simulations.

Every method runs with the same dataset, partition, model, seed, clients and
rounds on one simulation SuperLink. Per method and round the JSON holds the
central accuracy, the sparsity of the global model (``density``: fraction of
prunable weights kept), the cumulative MB up and down (every message measured:
saliency queries, train and evaluate), the uplink bits per prunable parameter
of a train reply and the round's wall seconds. The printed table compares the
final figures with the first method's (the baseline, FedAvg by default).

Usage::

    .venv/bin/python benchmarks/compare.py --rounds 20 \\
        --methods fedavg fedsparsify-global fedsparsify-local \\
        --run-config data-root=../shared/data --out benchmarks/results/fedsparsify.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fedmask.launch import parse_pairs, run_simulation, simulation_superlink

MB = 1e6
# The run-config each entry adds to the common one.
ENTRIES: dict[str, dict[str, Any]] = {
    "fedavg": {"method": "fedavg"},
    "hidenseek": {"method": "hidenseek"},
    "fedpm": {"method": "fedpm", "mask-coding": "entropy"},
    "mpfl": {"method": "mpfl", "density": 0.2},
    "ssfl": {"method": "ssfl", "density": 0.5},
    "fedsparsify-global": {"method": "fedsparsify", "fedsparsify-variant": "global"},
    "fedsparsify-local": {"method": "fedsparsify", "fedsparsify-variant": "local"},
}


def per_round(results: dict[str, Any]) -> list[dict[str, float]]:
    """Accuracy, density, cumulative measured MB and uplink bpp, per round."""
    n = results["num_params"]
    up = results["initial"].get("bytes_up", 0)
    down = results["initial"].get("bytes_down", 0)
    rows = []
    for record in results["rounds"]:
        up += record["bytes_up"] + record["eval_bytes_up"]
        down += record["bytes_down"] + record["eval_bytes_down"]
        clients = max(record["num_clients"], 1)
        rows.append({
            "round": record["round"], "accuracy": record["accuracy"],
            "density": record["train_metrics"].get("density", results["density"]),
            "cumulative_mb_up": up / MB, "cumulative_mb_down": down / MB,
            "uplink_bpp": 8 * record["bytes_up"] / clients / n, "wall_s": record["wall_s"],
        })
    return rows


def run_all(entries: list[str], rounds: int, num_supernodes: int, run_config: dict[str, Any],
            work: Path) -> dict[str, list[dict[str, float]]]:
    """Every entry's per-round figures, run one after another on one SuperLink."""
    figures = {}
    with simulation_superlink(work / "flwr-home") as env:
        for entry in entries:
            out = work / entry
            config = {**run_config, **ENTRIES[entry], "num-server-rounds": rounds,
                      "out-dir": str(out)}
            start = time.monotonic()
            figures[entry] = per_round(run_simulation(env, config, num_supernodes))
            last = figures[entry][-1]
            print(f"{entry:20s} accuracy {last['accuracy']:.4f}  up "
                  f"{last['cumulative_mb_up']:8.2f} MB  {time.monotonic() - start:5.0f} s",
                  flush=True)
    return figures


def summary(figures: dict[str, list[dict[str, float]]]) -> list[dict[str, float | str]]:
    """Final figures of every entry, with ratios to the first entry's."""
    base = next(iter(figures.values()))[-1]
    rows = []
    for entry, rounds in figures.items():
        last = rounds[-1]
        rows.append({"entry": entry, "accuracy": last["accuracy"], "density": last["density"],
                     "mb_up": last["cumulative_mb_up"], "mb_down": last["cumulative_mb_down"],
                     "accuracy_vs_base": last["accuracy"] - base["accuracy"],
                     "uplink_vs_base": last["cumulative_mb_up"] / base["cumulative_mb_up"],
                     "downlink_vs_base": last["cumulative_mb_down"] / base["cumulative_mb_down"]})
    return rows


def _print(rows: list[dict[str, float | str]]) -> None:
    print(f"\n{'entry':20s} {'accuracy':>8s} {'density':>8s} {'MB up':>9s} {'MB down':>9s} "
          f"{'acc-base':>9s} {'up/base':>8s} {'down/base':>9s}")
    for r in rows:
        print(f"{r['entry']:20s} {r['accuracy']:8.4f} {r['density']:8.4f} {r['mb_up']:9.2f} "
              f"{r['mb_down']:9.2f} {r['accuracy_vs_base']:+9.4f} {r['uplink_vs_base']:8.3f} "
              f"{r['downlink_vs_base']:9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(ENTRIES), choices=list(ENTRIES),
                        help="entries to run; the first is the baseline of the ratios")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config overrides common to all (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare.json"))
    args = parser.parse_args(argv)
    run_config = parse_pairs(args.run_config)
    with tempfile.TemporaryDirectory(prefix="fedmask-compare-") as work:
        figures = run_all(args.methods, args.rounds, args.num_supernodes, run_config, Path(work))
    rows = summary(figures)
    _print(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "num_supernodes": args.num_supernodes,
                                    "run_config": run_config, "summary": rows,
                                    "per_round": figures}, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
