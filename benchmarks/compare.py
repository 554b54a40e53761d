"""Benchmark: every method side by side on one profile, through real Flower simulations.

Every method runs with the same dataset, partition, model, seed, clients and
rounds on one simulation SuperLink, one after another. Per method and round the
JSON holds the central accuracy, the clients' mean personalised accuracy where
the method has one (HideNseek), the density of the global model, the cumulative
MB up and down (every message measured: queries, train, evaluate), the uplink
bits per prunable parameter of a train reply, the clients' seconds per train
message (mean and slowest), the server's aggregation seconds, the round's wall
seconds and the Flower overhead share ``(wall - slowest client) / wall``. It
also writes a Markdown table of the final figures and one PNG figure per profile
(accuracy vs cumulative uplink MB, accuracy vs round, uplink bits per parameter).

Profiles: ``smoke`` (CI-sized), ``iid`` (the app's defaults: FashionMNIST IID,
10 clients, 20 rounds), ``standard`` (FashionMNIST, Dirichlet 0.5, 20 clients,
50% per round, 30 rounds) and ``paper`` (CIFAR-10, conv6, 100 clients, 10% per
round, 100 rounds: for a GPU).

Usage::

    .venv/bin/python benchmarks/compare.py --profile standard \\
        --run-config data-root=../shared/data --out benchmarks/results/standard
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedmask import checkpoint
from fedmask.launch import parse_pairs, run_simulation, simulation_superlink

MB = 1e6
# The run-config each entry adds to the profile's.
ENTRIES: dict[str, dict[str, Any]] = {
    "fedavg": {"method": "fedavg"},
    "hidenseek": {"method": "hidenseek"},
    "fedpm": {"method": "fedpm", "mask-coding": "entropy"},
    "mpfl": {"method": "mpfl", "density": 0.2},
    "ssfl": {"method": "ssfl", "density": 0.5},
    "fedsparsify-global": {"method": "fedsparsify", "fedsparsify-variant": "global"},
    "fedsparsify-local": {"method": "fedsparsify", "fedsparsify-variant": "local"},
}
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"rounds": 2, "num_supernodes": 2, "run_config": {
        "dataset": "fashion-mnist", "partition": "iid", "train-limit": 64,
        "test-limit": 256, "synflow-iterations": 5}},
    "iid": {"rounds": 20, "num_supernodes": 10, "run_config": {}},  # the app's defaults
    "standard": {"rounds": 30, "num_supernodes": 20, "run_config": {
        "dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5,
        "fraction-train": 0.5, "fraction-evaluate": 0.25}},
    "paper": {"rounds": 100, "num_supernodes": 100, "run_config": {
        "dataset": "cifar10", "model": "conv6", "partition": "dirichlet", "alpha": 0.3,
        "fraction-train": 0.1, "fraction-evaluate": 0.1}},
}
ROUND_FIELDS = ("round", "accuracy", "personal_accuracy", "density", "cumulative_mb_up",
                "cumulative_mb_down", "uplink_bpp", "client_s_mean", "client_s_max",
                "aggregate_s", "wall_s", "overhead_share")


def per_round(results: dict[str, Any]) -> list[dict[str, float | None]]:
    """The ROUND_FIELDS of every round of a results.json."""
    n = results["num_params"]
    up = results["initial"].get("bytes_up", 0)
    down = results["initial"].get("bytes_down", 0)
    rows = []
    for record in results["rounds"]:
        up += record["bytes_up"] + record["eval_bytes_up"]
        down += record["bytes_down"] + record["eval_bytes_down"]
        seconds = [c["client_s"] for c in record["clients"] if not c["failed"]] or [0.0]
        rows.append({
            "round": record["round"], "accuracy": record["accuracy"],
            "personal_accuracy": record["client_eval_metrics"].get("personal-accuracy"),
            "density": record["train_metrics"].get("density", results["density"]),
            "cumulative_mb_up": up / MB, "cumulative_mb_down": down / MB,
            "uplink_bpp": 8 * record["bytes_up"] / max(len(record["clients"]), 1) / n,
            "client_s_mean": sum(seconds) / len(seconds), "client_s_max": max(seconds),
            "aggregate_s": record["aggregate_s"], "wall_s": record["wall_s"],
            "overhead_share": max(record["wall_s"] - max(seconds), 0.0) / record["wall_s"],
        })
    return rows


def _watch(out: Path, entry: str, rounds: int, done: threading.Event) -> None:
    """Print each round of a running entry as its checkpoint appears."""
    shown = 0
    while not done.wait(2.0):
        try:
            results = checkpoint.load(out / checkpoint.CHECKPOINT).document["results"]
        except (OSError, ValueError, KeyError):
            continue
        for record in results["rounds"][shown:]:
            print(f"  {entry:20s} round {record['round']:3d}/{rounds}  accuracy "
                  f"{record['accuracy']:.4f}  {record['wall_s']:6.1f} s", flush=True)
        shown = len(results["rounds"])


def run_all(entries: list[str], rounds: int, num_supernodes: int, run_config: dict[str, Any],
            work: Path) -> dict[str, list[dict[str, float | None]]]:
    """Every entry's per-round figures, run one after another on one SuperLink."""
    figures = {}
    with simulation_superlink(work / "flwr-home") as env:
        for entry in entries:
            out = work / entry
            config = {**run_config, **ENTRIES[entry], "num-server-rounds": rounds,
                      "out-dir": str(out)}
            start, done = time.monotonic(), threading.Event()
            watcher = threading.Thread(target=_watch, args=(out, entry, rounds, done))
            watcher.start()
            try:
                figures[entry] = per_round(run_simulation(env, config, num_supernodes))
            finally:
                done.set()
                watcher.join()
            last = figures[entry][-1]
            print(f"{entry:20s} accuracy {last['accuracy']:.4f}  up "
                  f"{last['cumulative_mb_up']:8.2f} MB  {time.monotonic() - start:5.0f} s",
                  flush=True)
    return figures


def summary(figures: dict[str, list[dict[str, float | None]]]) -> list[dict[str, Any]]:
    """Final figures of every entry, with ratios to the first entry's."""
    base = next(iter(figures.values()))[-1]
    rows = []
    for entry, rounds in figures.items():
        last = rounds[-1]
        rows.append({"entry": entry, "accuracy": last["accuracy"],
                     "personal_accuracy": last["personal_accuracy"], "density": last["density"],
                     "mb_up": last["cumulative_mb_up"], "mb_down": last["cumulative_mb_down"],
                     "uplink_bpp": last["uplink_bpp"],
                     "client_s_mean": sum(r["client_s_mean"] for r in rounds) / len(rounds),
                     "aggregate_s": sum(r["aggregate_s"] for r in rounds) / len(rounds),
                     "wall_s": sum(r["wall_s"] for r in rounds) / len(rounds),
                     "accuracy_vs_base": last["accuracy"] - base["accuracy"],
                     "uplink_vs_base": last["cumulative_mb_up"] / base["cumulative_mb_up"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = ["| method | accuracy | personalised | density | MB up | MB down | uplink bpp "
             "(last round) | up / first | client s / round | aggregation s | round s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        personal = "" if r["personal_accuracy"] is None else f"{r['personal_accuracy']:.4f}"
        lines.append(f"| {r['entry']} | {r['accuracy']:.4f} | {personal} | {r['density']:.3f} "
                     f"| {r['mb_up']:.2f} | {r['mb_down']:.2f} | {r['uplink_bpp']:.3f} "
                     f"| {r['uplink_vs_base']:.3f} | {r['client_s_mean']:.1f} "
                     f"| {r['aggregate_s']:.3f} | {r['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(figures: dict[str, list[dict[str, float | None]]], title: str, path: Path) -> None:
    """Accuracy vs cumulative uplink MB (log x), accuracy vs round, bpp per round."""
    import matplotlib  # noqa: PLC0415 - only the plotting needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for entry, rounds in figures.items():
        rnd = [r["round"] for r in rounds]
        axes[0].plot([r["cumulative_mb_up"] for r in rounds], [r["accuracy"] for r in rounds],
                     marker=".", label=entry)
        axes[1].plot(rnd, [r["accuracy"] for r in rounds], marker=".", label=entry)
        axes[2].plot(rnd, [r["uplink_bpp"] for r in rounds], marker=".", label=entry)
    axes[0].set(xscale="log", xlabel="cumulative uplink (MB, measured)",
                ylabel="central accuracy")
    axes[1].set(xlabel="round", ylabel="central accuracy")
    axes[2].set(yscale="log", xlabel="round", ylabel="uplink bits per parameter")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="smoke")
    parser.add_argument("--methods", nargs="+", default=list(ENTRIES), choices=list(ENTRIES),
                        help="entries to run; the first is the baseline of the ratios")
    parser.add_argument("--rounds", type=int, help="override the profile's rounds")
    parser.add_argument("--num-supernodes", type=int, help="override the profile's clients")
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value overrides common to all (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"),
                        help="writes OUT.json, OUT.md and OUT.png")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    rounds = args.rounds or profile["rounds"]
    nodes = args.num_supernodes or profile["num_supernodes"]
    run_config = {**profile["run_config"], **parse_pairs(args.run_config)}
    print(f"profile {args.profile}: {len(args.methods)} methods x {rounds} rounds, "
          f"{nodes} clients", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedmask-compare-") as work:
        figures = run_all(args.methods, rounds, nodes, run_config, Path(work))
    rows = summary(figures)
    table = markdown(rows)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"profile": args.profile, "rounds": rounds, "num_supernodes": nodes,
         "run_config": run_config, "summary": rows, "per_round": figures}, indent=2))
    args.out.with_suffix(".md").write_text(table)
    plot(figures, f"{args.profile}: {run_config.get('dataset')}, {nodes} clients",
         args.out.with_suffix(".png"))
    print(f"written: {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
