"""Benchmark: every method side by side on one profile, through real Flower simulations.

Every method runs with the same dataset, partition, model, seed, clients and
rounds on one simulation SuperLink, one after another. Per method and round the
JSON holds the central accuracy, the evaluating clients' mean accuracy of the
global model on their own test data and, where the method has one (HideNseek,
FedAvg-FT), after fine-tuning on their own data (personalised), the density of
the global model, the cumulative MB up and down (every message measured:
queries, train, evaluate), the uplink bits per prunable parameter of a train
reply, the clients' seconds per train message (mean and slowest), the server's
aggregation seconds, the round's wall seconds and the Flower overhead share
``(wall - slowest client) / wall``. It also writes a Markdown table of the final
figures (the clients' figures also as means over the last 10 rounds: a round
evaluates only a few clients) and one PNG figure per profile
(accuracy vs cumulative uplink MB, accuracy vs round, uplink bits per parameter).

Each entry is also reported as a fraction of its central ceiling (``ceiling.py``:
its network trained centrally on the clients' data for as many steps), with the
largest round-to-round change of its central accuracy over the last 10 rounds.

Profiles: ``smoke`` (CI-sized), ``iid`` (the app's defaults: FashionMNIST IID,
10 clients, 20 rounds), ``standard`` (FashionMNIST, Dirichlet 0.5, 20 clients,
50% per round, 30 rounds, at most 1,200 training images per client), ``limited``
(the same with 400 images per client) and ``paper`` (CIFAR-10, conv6, 100
clients, 10% per round, 100 rounds: for a GPU). ``--run-config
dataset=\"mnist\"`` runs a profile on MNIST.

Usage::

    .venv/bin/python benchmarks/compare.py --profile standard \\
        --run-config data-root=../shared/data --out benchmarks/results/standard
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ceiling import ceilings

from fedmask.launch import exit_on_sigterm, parse_pairs, run_simulation, simulation_superlink
from fedmask.methods import REGISTRY
from fedmask.server import checkpoint

MB = 1e6
Runner = Callable[[dict[str, Any], int], dict[str, Any]]  # (config, nodes) -> results.json
# Each registered method is an entry (FedAvg first: the baseline of the ratios), with
# the settings it is benchmarked at; a method with VARIANTS gets one entry per variant.
TUNING: dict[str, dict[str, Any]] = {"mpfl": {"density": 0.2}, "ssfl": {"density": 0.5}}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "fedsparsify": {variant: {"fedsparsify-variant": variant} for variant in ("global", "local")}}


def _entries() -> dict[str, dict[str, Any]]:
    """The run-config each entry adds to the profile's."""
    entries = {}
    for method in ["fedavg", *(name for name in REGISTRY if name != "fedavg")]:
        for variant, extra in VARIANTS.get(method, {"": {}}).items():
            name = f"{method}-{variant}" if variant else method
            entries[name] = {"method": method, **TUNING.get(method, {}), **extra}
    return entries


ENTRIES = _entries()
SGD_ENTRIES = ("fedavg", "mpfl", "ssfl", "fedsparsify-global", "fedsparsify-local")
# Each profile: rounds, clients, the run-config common to all entries and, optionally,
# per-entry additions (entry_config).
PROFILES: dict[str, dict[str, Any]] = {
    # The test suite's runs (tests/conftest.py) use this profile's settings too. Two
    # entries run at a time: start-up (imports, Ray) leaves a core idle part of the time.
    "smoke": {"rounds": 2, "num_supernodes": 3, "parallel": 2, "run_config": {
        "dataset": "fashion-mnist", "partition": "iid", "train-limit": 400,
        "test-limit": 1000, "synflow-iterations": 20, "fraction-evaluate": 1.0}},
    "iid": {"rounds": 20, "num_supernodes": 10, "run_config": {}},  # the app's defaults
    # Each client trains on at most 1,200 of its images and 3 of the 20 evaluate
    # each round, for the seven methods to fit in about 45 minutes on a 2-core CPU
    # (measured: 48; with 1,500 images and 5 evaluating: 56). The SGD-trained methods use lr
    # 0.02: at the default 0.05 dense FedAvg collapsed to a constant output in
    # round 1 on this skew (loss ln 10).
    "standard": {"rounds": 30, "num_supernodes": 20, "run_config": {
        "dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5,
        "fraction-train": 0.5, "fraction-evaluate": 0.15, "train-limit": 1200},
        "entry_config": {entry: {"lr": 0.02} for entry in SGD_ENTRIES}},
    # The standard profile with 400 training images per client (data-poor clients),
    # every method at its defaults (chosen by sweep.py on this regime).
    "limited": {"rounds": 30, "num_supernodes": 20, "run_config": {
        "dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5,
        "fraction-train": 0.5, "fraction-evaluate": 0.15, "train-limit": 400}},
    # Stress regimes: the limited profile under harder label skew (Dirichlet 0.1), and
    # with two classes per client (shards).
    "limited-skew": {"rounds": 30, "num_supernodes": 20, "run_config": {
        "dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.1,
        "fraction-train": 0.5, "fraction-evaluate": 0.15, "train-limit": 400}},
    "limited-shards": {"rounds": 30, "num_supernodes": 20, "run_config": {
        "dataset": "fashion-mnist", "partition": "shards",
        "fraction-train": 0.5, "fraction-evaluate": 0.15, "train-limit": 400}},
    "paper": {"rounds": 100, "num_supernodes": 100, "run_config": {
        "dataset": "cifar10", "model": "conv6", "partition": "dirichlet", "alpha": 0.3,
        "fraction-train": 0.1, "fraction-evaluate": 0.1}},
}
SWING_ROUNDS = 10  # the stability figure looks at this many last rounds
SEED_TAG = "-seed"  # a run of entry E with seed offset S is named E-seedS (--seeds > 1)
# Figures reported with their standard deviation over seeds.
SPREAD_FIELDS = ("accuracy", "last10_accuracy", "personal_accuracy", "last10_personal_accuracy",
                 "last10_local_accuracy", "ceiling", "of_ceiling", "swing")
ROUND_FIELDS = ("round", "accuracy", "local_accuracy", "personal_accuracy", "density",
                "cumulative_mb_up", "cumulative_mb_down", "uplink_bpp", "client_s_mean",
                "client_s_max", "aggregate_s", "wall_s", "overhead_share")


def per_round(results: dict[str, Any]) -> list[dict[str, float | None]]:
    """The ROUND_FIELDS of every round of a results.json."""
    n = results["num_params"]
    up = results["initial"].get("bytes_up", 0)
    down = results["initial"].get("bytes_down", 0)
    rows = []
    for record in results["rounds"]:
        up += record["bytes_up"] + record["eval_bytes_up"] + record["query_bytes_up"]
        down += record["bytes_down"] + record["eval_bytes_down"] + record["query_bytes_down"]
        seconds = [c["client_s"] for c in record["clients"] if not c["failed"]] or [0.0]
        rows.append({
            "round": record["round"], "accuracy": record["accuracy"],
            "local_accuracy": record["client_eval_metrics"].get("accuracy"),
            "personal_accuracy": record["client_eval_metrics"].get("personal-accuracy"),
            "density": record["train_metrics"].get("density", results["density"]),
            "cumulative_mb_up": up / MB, "cumulative_mb_down": down / MB,
            "uplink_bpp": (8 * (record["bytes_up"] + record["query_bytes_up"])
                           / max(len(record["clients"]), 1) / n),
            "client_s_mean": sum(seconds) / len(seconds), "client_s_max": max(seconds),
            "aggregate_s": record["aggregate_s"], "wall_s": record["wall_s"],
            "overhead_share": max(record["wall_s"] - max(seconds), 0.0) / record["wall_s"],
        })
    return rows


def _watch(out: Path, entry: str, rounds: int, done: threading.Event,
           say: Callable[[str], None]) -> None:
    """Say each round of a running entry as its checkpoint appears, and once more
    when the run has ended (a short run may end between two looks)."""
    shown, ended = 0, False
    while not ended:
        ended = done.wait(2.0)
        try:
            results = checkpoint.load(out / checkpoint.CHECKPOINT).document["results"]
        except (OSError, ValueError, KeyError):
            continue
        for record in results["rounds"][shown:]:
            say(f"  {entry:20s} round {record['round']:3d}/{rounds}  accuracy "
                f"{record['accuracy']:.4f}  {record['wall_s']:6.1f} s")
        shown = len(results["rounds"])


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def entry_configs(profile: dict[str, Any], entries: list[str],
                  run_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run-config of every entry: `run_config`, the entry's, the profile's for it."""
    extra = profile.get("entry_config", {})
    return {entry: {**run_config, **ENTRIES[entry], **extra.get(entry, {})}
            for entry in entries}


@dataclass
class EntryRun:
    """One entry's results.json and the seconds of its whole run, start-up included."""

    results: dict[str, Any]
    run_s: float


def run_entry(runner: Runner, entry: str, config: dict[str, Any], rounds: int,
              num_supernodes: int, work: Path, say: Callable[[str], None]) -> EntryRun:
    """Run one entry with `runner` (``runner(config, num_supernodes)`` -> results.json);
    each round is said as it ends."""
    out = work / entry
    config = {**config, "num-server-rounds": rounds, "out-dir": str(out)}
    start, done = time.monotonic(), threading.Event()
    watcher = threading.Thread(target=_watch, args=(out, entry, rounds, done, say))
    watcher.start()
    try:
        results = runner(config, num_supernodes)
    finally:
        done.set()
        watcher.join()
    run = EntryRun(results, time.monotonic() - start)
    say(f"{entry:20s} accuracy {results['rounds'][-1]['accuracy']:.4f}  done in "
        f"{run.run_s:5.0f} s")
    return run


def run_all(runner: Runner, configs: dict[str, dict[str, Any]], rounds: int,
            num_supernodes: int, work: Path, say: Callable[[str], None] = print,
            parallel: int = 1) -> dict[str, EntryRun]:
    """Every entry's run (see run_entry), each with its config (see entry_configs),
    `parallel` at a time (then they share the CPU: use 1 for timings); progress to
    `say`."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = {entry: pool.submit(run_entry, runner, entry, config, rounds, num_supernodes,
                                      work, say) for entry, config in configs.items()}
        return {entry: future.result() for entry, future in futures.items()}


def in_process(config: dict[str, Any], num_supernodes: int) -> dict[str, Any]:
    """One run in this process, through ``loopback.py`` (fedmask's ServerApp and
    ClientApp bodies, messages serialized and measured, no Ray), on one thread as
    each simulated client trains, so it ends where ``flwr run`` ends; the process's
    thread count is restored after."""
    import torch  # noqa: PLC0415 - a worker's own setting
    from loopback import run_federation  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_federation(config, num_supernodes)
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def runner_for(in_process_runs: bool, parallel: int, work: Path) -> Iterator[Runner]:
    """A runner of real Flower simulations on one SuperLink, or of in-process
    federations in `parallel` worker processes."""
    if not in_process_runs:
        with simulation_superlink(work / "flwr-home") as env:
            yield functools.partial(run_simulation, env)
        return
    with ProcessPoolExecutor(parallel) as workers:
        yield lambda config, nodes: workers.submit(in_process, config, nodes).result()


def seeded(configs: dict[str, dict[str, Any]], seeds: int) -> dict[str, dict[str, Any]]:
    """With `seeds` > 1, every entry's config once per seed offset S (its ``seed``
    plus S: partition, weights, sampling), named ENTRY-seedS; else `configs`."""
    if seeds == 1:
        return configs
    return {f"{entry}{SEED_TAG}{s}": {**config, "seed": int(config.get("seed", 0)) + s}
            for entry, config in configs.items() for s in range(seeds)}


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows of runs named ENTRY-seedS merged into one row per entry: every
    figure its mean over the seeds, SPREAD_FIELDS also with FIELD_std (sample
    standard deviation); ratios to the baseline recomputed from the means."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["entry"].rsplit(SEED_TAG, 1)[0], []).append(row)
    merged = []
    for entry, group in groups.items():
        out: dict[str, Any] = {"entry": entry, "seeds": len(group)}
        for key in group[0]:
            values = [r[key] for r in group]
            if key == "entry" or any(v is None for v in values):
                out.setdefault(key, None)
                continue
            out[key] = statistics.mean(values)
            if key in SPREAD_FIELDS:
                out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        merged.append(out)
    base = merged[0]
    for row in merged:
        row["accuracy_vs_base"] = row["accuracy"] - base["accuracy"]
        row["uplink_vs_base"] = row["mb_up"] / base["mb_up"]
    return merged


def swing(rounds: list[dict[str, float | None]], last: int = SWING_ROUNDS) -> float:
    """The largest change of central accuracy between consecutive rounds among the
    `last` rounds."""
    accuracy = [float(r["accuracy"] or 0.0) for r in rounds[-last:]]
    return max((abs(b - a) for a, b in zip(accuracy, accuracy[1:])), default=0.0)


def last_mean(rounds: list[dict[str, float | None]], key: str, last: int = SWING_ROUNDS
              ) -> float | None:
    """The mean of `key` over the `last` rounds that report it (None if none does)."""
    values = [float(v) for r in rounds[-last:] if (v := r.get(key)) is not None]
    return statistics.mean(values) if values else None


def summary(figures: dict[str, list[dict[str, float | None]]], run_s: dict[str, float],
            results: dict[str, dict[str, Any]], ceiling: dict[str, float]
            ) -> list[dict[str, Any]]:
    """Final figures of every entry, with ratios to the first entry's and to its
    `ceiling` accuracy; `run_s` are the seconds of each entry's whole run; `results`
    their results.json (the measured size of the model file and of a float32 state
    dict)."""
    base = next(iter(figures.values()))[-1]
    rows = []
    for entry, rounds in figures.items():
        last = rounds[-1]
        rows.append({"entry": entry, "run_s": run_s[entry], "accuracy": last["accuracy"],
                     "personal_accuracy": last["personal_accuracy"], "density": last["density"],
                     "mb_up": last["cumulative_mb_up"], "mb_down": last["cumulative_mb_down"],
                     "uplink_bpp": last["uplink_bpp"],
                     "client_s_mean": sum(r["client_s_mean"] for r in rounds) / len(rounds),
                     "aggregate_s": sum(r["aggregate_s"] for r in rounds) / len(rounds),
                     "wall_s": sum(r["wall_s"] for r in rounds) / len(rounds),
                     "accuracy_vs_base": last["accuracy"] - base["accuracy"],
                     "ceiling": ceiling[entry], "of_ceiling": last["accuracy"] / ceiling[entry],
                     "swing": swing(rounds),
                     "last10_accuracy": last_mean(rounds, "accuracy"),
                     "last10_local_accuracy": last_mean(rounds, "local_accuracy"),
                     "last10_personal_accuracy": last_mean(rounds, "personal_accuracy"),
                     "uplink_vs_base": last["cumulative_mb_up"] / base["cumulative_mb_up"],
                     **model_size(results[entry])})
    return rows


def model_size(results: dict[str, Any]) -> dict[str, float]:
    """The model file's measured bytes, bits per prunable parameter, and ratio to
    the float32 state dict's bytes."""
    size = results["model_file_bytes"]
    return {"model_bytes": size, "model_bpp": 8 * size / results["num_params"],
            "model_vs_float32": size / results["float32_state_dict_bytes"]}


def spread(row: dict[str, Any], key: str, digits: int = 4) -> str:
    """``row[key]``, with `` ± std`` where the row has one (empty when None)."""
    if row[key] is None:
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (means ± standard deviations over seeds)."""
    lines = ["| method | accuracy | mean of last 10 | ceiling | of ceiling | swing (last 10) "
             "| personalised | local, last 10 | personalised, last 10 | density | MB up | MB down "
             "| uplink bpp (last round) | up / first | client s / round | aggregation s | round s "
             "| run min | model file bytes | model bpp | model / float32 |",
             "|" + "---|" * 21]
    for r in rows:
        lines.append(f"| {r['entry']} | {spread(r, 'accuracy')} "
                     f"| {spread(r, 'last10_accuracy')} | {spread(r, 'ceiling')} "
                     f"| {spread(r, 'of_ceiling', 3)} | {spread(r, 'swing')} "
                     f"| {spread(r, 'personal_accuracy')} "
                     f"| {spread(r, 'last10_local_accuracy')} "
                     f"| {spread(r, 'last10_personal_accuracy')} "
                     f"| {r['density']:.3f} "
                     f"| {r['mb_up']:.2f} | {r['mb_down']:.2f} | {r['uplink_bpp']:.3f} "
                     f"| {r['uplink_vs_base']:.3f} | {r['client_s_mean']:.1f} "
                     f"| {r['aggregate_s']:.3f} | {r['wall_s']:.1f} | {r['run_s'] / 60:.1f} "
                     f"| {r['model_bytes']:,.0f} | {r['model_bpp']:.3f} "
                     f"| {r['model_vs_float32']:.4f} |")
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


def report(profile: str, runs: dict[str, EntryRun], rounds: int, nodes: int,
           run_config: dict[str, Any], out: Path) -> str:
    """Write OUT.json (per round and final figures, each entry's central ceiling; with
    several seeds, each run's figures under ``runs`` and their means in ``summary``),
    OUT.md and OUT.png from the entries' runs; return the Markdown table."""
    figures = {entry: per_round(run.results) for entry, run in runs.items()}
    run_s = {entry: run.run_s for entry, run in runs.items()}
    ceiling = ceilings({entry: run.results["config"] for entry, run in runs.items()}, nodes)
    rows = summary(figures, run_s, {entry: run.results for entry, run in runs.items()},
                   {entry: figure["accuracy"] for entry, figure in ceiling.items()})
    merged = over_seeds(rows) if any(SEED_TAG in entry for entry in runs) else rows
    table = markdown(merged)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"profile": profile, "rounds": rounds, "num_supernodes": nodes,
         "total_s": sum(run_s.values()),
         "run_config": run_config, "entry_config": {e: run.results["config"] for e,
                                                    run in runs.items()},
         "ceiling": ceiling, "summary": merged,
         **({"runs": rows} if merged is not rows else {}), "per_round": figures}, indent=2))
    out.with_suffix(".md").write_text(table)
    plot(figures, f"{profile}: {run_config.get('dataset')}, {nodes} clients",
         out.with_suffix(".png"))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="smoke")
    parser.add_argument("--methods", nargs="+", default=list(ENTRIES), choices=list(ENTRIES),
                        help="entries to run; the first is the baseline of the ratios")
    parser.add_argument("--rounds", type=positive_int, help="override the profile's rounds")
    parser.add_argument("--num-supernodes", type=positive_int,
                        help="override the profile's clients")
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value overrides common to all (JSON values)")
    parser.add_argument("--parallel", type=positive_int,
                        help="entries run at a time (default: the profile's, else 1)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="run every entry this many times, with seeds seed..seed+N-1, "
                             "and report means and standard deviations")
    parser.add_argument("--in-process", action="store_true",
                        help="run each entry in-process (loopback.py: the same server and "
                             "client code, no Ray or gRPC; timings are not Flower's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"),
                        help="writes OUT.json, OUT.md and OUT.png")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    profile = PROFILES[args.profile]
    rounds = args.rounds or profile["rounds"]
    nodes = args.num_supernodes or profile["num_supernodes"]
    run_config = {**profile["run_config"], **parse_pairs(args.run_config)}
    print(f"profile {args.profile}: {len(args.methods)} methods x {rounds} rounds x "
          f"{args.seeds} seeds, {nodes} clients", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedmask-compare-") as work:
        parallel = args.parallel or profile.get("parallel", 1)
        with runner_for(args.in_process, parallel, Path(work)) as runner:
            configs = seeded(entry_configs(profile, args.methods, run_config), args.seeds)
            runs = run_all(runner, configs, rounds, nodes, Path(work),
                           functools.partial(print, flush=True), parallel)
    table = report(args.profile, runs, rounds, nodes, run_config, args.out)
    print(f"\n{table}\nwritten: {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
