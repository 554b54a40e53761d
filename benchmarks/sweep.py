"""Benchmark: a small hyper-parameter sweep per method, scored on validation data.

Every candidate setting of a method (learning rate, optimiser, local steps and
the method's aggregation options) runs the ``standard`` profile's federation
(Dirichlet 0.5, 20 clients, half of them per round) on each dataset and data
regime asked for, in-process (``loopback.py``: the same server and client code
as ``flwr run``, without the transport). Its score is the mean central accuracy
of its last ``--score-rounds`` rounds on ``validation-size`` training images
held out from every client, never the test set. The JSON holds every run's
settings and per-round validation accuracy, and per method the setting with
the best mean score over all datasets and regimes, with a Markdown table of
them (OUT.md): fedmask's defaults were chosen from it (README, "How the
defaults were chosen"). ``--reuse`` keeps the runs of an earlier sweep JSON.

Usage::

    .venv/bin/python benchmarks/sweep.py --run-config data-root=\\"../shared/data\\" \\
        --datasets fashion-mnist mnist --regimes standard limited --workers 2 \\
        --out benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fedmask.launch import parse_pairs

from compare import PROFILES, in_process

# Candidate settings per method (run-config keys); the first is the default it
# had before the sweep.
GRID: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{"lr": 0.02}, {"lr": 0.05}, {"lr": 0.01}, {"lr": 0.02, "min-local-steps": 20},
               {"lr": 0.02, "min-local-steps": 40}],
    "hidenseek": [
        {"lr": 0.01}, {"lr": 0.003}, {"lr": 0.03},
        {"lr": 0.01, "vote-smoothing": 0.5}, {"lr": 0.01, "vote-smoothing": 0.8},
        {"lr": 0.01, "vote": "share"},
        {"lr": 0.01, "vote": "share", "vote-smoothing": 0.5},
        {"lr": 0.01, "min-local-steps": 20},
        {"lr": 0.01, "vote": "share", "min-local-steps": 20},
        {"lr": 0.01, "vote-smoothing": 0.5, "min-local-steps": 20},
        {"lr": 0.005, "min-local-steps": 20}, {"lr": 0.01, "min-local-steps": 40},
        {"lr": 0.005, "min-local-steps": 40},
        {"lr": 0.01, "vote": "share", "vote-smoothing": 0.5, "min-local-steps": 40},
        {"lr": 0.01, "min-local-steps": 20, "init": "signed-constant"},
        {"optimizer": "sgd", "lr": 0.3, "min-local-steps": 20},
        {"optimizer": "sgd", "lr": 1.0, "min-local-steps": 20},
        {"lr": 0.01, "min-local-steps": 20, "batch-size": 32},
        {"lr": 0.01, "min-local-steps": 20, "density": 0.7},
        {"lr": 0.01, "min-local-steps": 20, "density": 1.0}],
    "fedpm": [
        {"lr": 0.1}, {"lr": 0.1, "posterior": "mode"}, {"lr": 0.03, "posterior": "mode"},
        {"lr": 0.1, "posterior": "mode", "weighted-aggregation": True},
        {"lr": 0.1, "posterior": "mode", "prior-reset": 0},
        {"lr": 0.1, "posterior": "mode", "min-local-steps": 20},
        {"lr": 0.2, "posterior": "mode"}, {"lr": 0.2, "posterior": "mode", "min-local-steps": 20},
        {"lr": 0.2, "posterior": "mode", "min-local-steps": 40},
        {"lr": 0.2, "posterior": "mode", "min-local-steps": 20, "prior-reset": 2},
        {"lr": 0.2, "posterior": "mode", "min-local-steps": 20, "prior-reset": 3},
        {"lr": 0.2, "posterior": "mode", "min-local-steps": 20, "estimator": "theta"},
        {"lr": 0.4, "posterior": "mode", "min-local-steps": 20, "estimator": "theta"}],
    "mpfl": [{"lr": 0.02}, {"lr": 0.05}, {"lr": 0.02, "min-local-steps": 20}],
    "ssfl": [{"lr": 0.02}, {"lr": 0.05}, {"lr": 0.02, "min-local-steps": 20}],
    "fedsparsify": [{"lr": 0.02}, {"lr": 0.05}, {"lr": 0.02, "min-local-steps": 20}],
}
# Each method's default setting without and with the ``min-local-steps`` default
# (``--grid steps``): does the data-poor clients' default hold where clients have more data?
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "fedavg": {"lr": 0.02}, "hidenseek": {"lr": 0.01}, "fedpm": {"lr": 0.2, "posterior": "mode"},
    "mpfl": {"lr": 0.02}, "ssfl": {"lr": 0.02}, "fedsparsify": {"lr": 0.02}}
# HideNseek's aggregation under label skew (``--grid skew``, with ``--regimes limited
# skew shards``): the paper's majority vote (vote-smoothing 0) against the default
# (0.5), and the default trained by SGD with momentum 0.9 at lr 0.1 (Flower's
# template loop); FedAvg at its defaults is the reference. The first sweep of this
# grid (benchmarks/results/sweep-skew-first.json) also tried the share vote.
SKEW_GRID: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{}],
    "hidenseek": [{"vote-smoothing": 0.0}, {"vote-smoothing": 0.5},
                  {"optimizer": "sgd", "lr": 0.1, "vote-smoothing": 0.5}]}
# What holds HideNseek's global signs still under skew (``--grid drift``, 30 rounds):
# a longer vote memory than the default's.
DRIFT_GRID: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{}],
    "hidenseek": [{"vote-smoothing": 0.5}, {"vote-smoothing": 0.8}, {"vote-smoothing": 0.9}]}
# Each method's local loss (``--grid loss``, with ``--regimes limited skew shards``): plain
# cross-entropy against the balanced softmax (``loss = "balanced"``).
# HideNseek's per-class logit offset as built (``class-bias``), on the regimes its
# screen ran (``--grid offset --regimes limited skew shards``), to be set beside
# the screen's figures (benchmarks/results/class-bias-screen.json: ``as_is`` is the
# default's trajectory without it, ``sgd3mem`` the rule built here).
OFFSET_GRID: dict[str, list[dict[str, Any]]] = {
    "hidenseek": [{"class-bias": "federated", "class-bias-lr": 3.0}]}
# Where the offsets' class statistics are taken (``--grid report``, same regimes): in
# the train replies (the default), or after the vote on the voted model; each at the
# default step and at 10.
REPORT_GRID: dict[str, list[dict[str, Any]]] = {
    "hidenseek": [{"class-bias": "federated", "class-bias-lr": lr, "class-bias-report": report}
                  for lr, report in ((3.0, "train"), (3.0, "voted"), (10.0, "voted"),
                                     (10.0, "train"))]}
LOSS_GRID: dict[str, list[dict[str, Any]]] = {
    method: [{"loss": "cross-entropy"}, {"loss": "balanced"}] for method in GRID}
GRIDS = {"main": GRID, "skew": SKEW_GRID, "drift": DRIFT_GRID, "loss": LOSS_GRID,
         "offset": OFFSET_GRID, "report": REPORT_GRID,
         "steps": {method: [{**setting, "min-local-steps": steps} for steps in (0, 20)]
                   for method, setting in DEFAULT_SETTINGS.items()}}
# Data regimes: the standard profile, the same with 400 images per client, and that
# under harder label skew (Dirichlet 0.1) or with two classes per client (shards).
REGIMES = {"standard": {}, "limited": {"train-limit": 400},
           "skew": {"train-limit": 400, "alpha": 0.1},
           "shards": {"train-limit": 400, "partition": "shards"}}
VALIDATION_SIZE = 2000


def run_one(config: dict[str, Any], num_nodes: int) -> dict[str, Any]:
    """One federation (in a worker process): its per-round validation accuracy."""
    start = time.monotonic()
    results = in_process(config, num_nodes)
    return {"accuracy": [r["accuracy"] for r in results["rounds"]],
            "seconds": time.monotonic() - start}


def candidates(methods: list[str], datasets: list[str], regimes: list[str],
               rounds: int, common: dict[str, Any], grid: str = "main") -> list[dict[str, Any]]:
    """Every (method, setting, dataset, regime) to run, with its full run config."""
    profile = PROFILES["standard"]["run_config"]
    runs = []
    for method in methods:
        for index, setting in enumerate(GRIDS[grid].get(method, [])):
            for dataset in datasets:
                for regime in regimes:
                    config = {**profile, **REGIMES[regime], **common, **setting,
                              "method": method, "dataset": dataset,
                              "num-server-rounds": rounds, "validation-size": VALIDATION_SIZE,
                              "fraction-evaluate": 0.0}
                    runs.append({"method": method, "setting": index, "options": setting,
                                 "dataset": dataset, "regime": regime, "config": config})
    return runs


# Where data and outputs live does not change a run's result.
LOCATIONS = ("out-dir", "data-root")


def run_key(run: dict[str, Any]) -> str:
    """What makes two runs the same: method, dataset, regime and full run config
    (where data and outputs live aside)."""
    config = {k: v for k, v in run["config"].items() if k not in LOCATIONS}
    return json.dumps([run["method"], run["dataset"], run["regime"], config], sort_keys=True)


def reusable(path: Path) -> dict[str, dict[str, Any]]:
    """The accuracy and seconds of every run of the sweep JSON at `path`."""
    return {run_key(run): {"accuracy": run["accuracy"], "seconds": run["seconds"]}
            for run in json.loads(path.read_text())["runs"]}


def choose(runs: list[dict[str, Any]], score_rounds: int) -> dict[str, Any]:
    """Per method, every setting's mean score and the best one."""
    chosen: dict[str, Any] = {}
    for run in runs:
        run["score"] = sum(run["accuracy"][-score_rounds:]) / score_rounds
        entry = chosen.setdefault(run["method"], {"settings": {}})
        entry["settings"].setdefault(str(run["setting"]), {"options": run["options"], "scores": []})
        entry["settings"][str(run["setting"])]["scores"].append(run["score"])
    for entry in chosen.values():
        for setting in entry["settings"].values():
            setting["mean"] = sum(setting["scores"]) / len(setting["scores"])
        best = max(entry["settings"].values(), key=lambda s: s["mean"])
        entry["best"] = best["options"]
    return chosen


def markdown(runs: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    """A table: per method and setting, the score on every (dataset, regime) and
    their mean; the chosen setting in bold."""
    columns = sorted({(run["dataset"], run["regime"]) for run in runs})
    scores = {(run["method"], str(run["setting"]), run["dataset"], run["regime"]): run["score"]
              for run in runs}
    lines = ["| method | setting | " + " | ".join(f"{d} {r}" for d, r in columns)
             + " | mean |", "|---|---|" + "---|" * (len(columns) + 1)]
    for method, entry in chosen.items():
        for index, setting in entry["settings"].items():
            name = ", ".join(f"{k}={v}" for k, v in setting["options"].items()) or "defaults"
            if setting["options"] == entry["best"]:
                name = f"**{name}**"
            cells = [f"{scores[(method, index, d, r)]:.4f}" if (method, index, d, r) in scores
                     else "" for d, r in columns]
            lines.append(f"| {method} | {name} | " + " | ".join(cells)
                         + f" | {setting['mean']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist"])
    parser.add_argument("--grid", default="main", choices=list(GRIDS),
                        help="main: every candidate of GRID; steps: each method's default "
                             "setting at 0 and 20 min-local-steps; skew: HideNseek's "
                             "aggregation options (SKEW_GRID); drift: its vote memory "
                             "(DRIFT_GRID); loss: each method's local loss (LOSS_GRID); offset: "
                             "HideNseek's per-class logit offset (OFFSET_GRID); report: where "
                             "its class statistics are taken (REPORT_GRID)")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--rounds", type=int, default=PROFILES["standard"]["rounds"])
    parser.add_argument("--score-rounds", type=int, default=5,
                        help="a run's score: mean validation accuracy of its last rounds")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config common to all (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    parser.add_argument("--reuse", type=Path,
                        help="a sweep JSON whose runs of the same settings are kept, not re-run")
    args = parser.parse_args(argv)
    runs = candidates(args.methods, args.datasets, args.regimes, args.rounds,
                      parse_pairs(args.run_config), args.grid)
    done = reusable(args.reuse) if args.reuse else {}
    for run in runs:
        run.update(done.get(run_key(run), {}))
    todo = [run for run in runs if "accuracy" not in run]
    nodes = PROFILES["standard"]["num_supernodes"]
    print(f"sweep: {len(todo)} runs of {args.rounds} rounds ({len(runs) - len(todo)} reused), "
          f"{args.workers} at a time", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, run["config"], nodes) for run in todo]
        for run, future in zip(todo, futures):
            run.update(future.result())
            print(f"{run['method']:10s} {json.dumps(run['options']):55s} {run['dataset']:14s} "
                  f"{run['regime']:9s} last {run['accuracy'][-1]:.4f}  "
                  f"{run['seconds']:.0f} s", flush=True)
    chosen = choose(runs, args.score_rounds)
    for method, entry in chosen.items():
        print(f"{method}: best {json.dumps(entry['best'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "score_rounds": args.score_rounds,
                                    "validation_size": VALIDATION_SIZE, "chosen": chosen,
                                    "runs": runs}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(runs, chosen))
    print(f"written: {args.out}, {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
