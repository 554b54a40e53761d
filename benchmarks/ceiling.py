"""Benchmark: each method's central ceiling, the reference a federated run is a fraction of.

A method's network is trained centrally, on the union of the clients' training
data (the same partitions, limits and validation hold-out as the federated run),
for as many local steps as one client of the federated run makes over all its
rounds: dense SGD for the weight methods (MPFL, SSFL, FedSparsify and FedAvg
share one dense ceiling), the sign supermask over the seeded SynFlow-pruned net
for HideNseek, the Bernoulli supermask over the seeded signed-constant net for
FedPM, each with the method's optimiser and learning rate. The accuracy is
measured where the federated run measures its central accuracy (the test set,
or the ``validation-size`` hold-out). ``compare.py`` reports every entry as a
fraction of its ceiling.

Usage::

    .venv/bin/python benchmarks/ceiling.py --num-supernodes 20 --rounds 30 \\
        --run-config data-root=\\"../shared/data\\" partition=\\"dirichlet\\" train-limit=400
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from fedmask import config as run_config
from fedmask.client.node import node_data
from fedmask.data.datasets import get_spec
from fedmask.launch import parse_pairs
from fedmask.methods import REGISTRY
from fedmask.nn import training
from fedmask.server.app import build_strategy, central_loader

MASK_METHODS = ("hidenseek", "fedpm")  # the others' ceiling is dense SGD (fedavg's)
# Common options a central training does not depend on.
NOT_TRAINING = ("method", "out-dir", "resume", "mask-coding", "model-value-format", "density",
                "fraction-train", "fraction-evaluate", "min-nodes", "node-wait-s",
                "round-timeout-s")


def ceiling_method(method: str) -> str:
    """The method whose network stands for `method`'s ceiling."""
    return method if method in MASK_METHODS else "fedavg"


def union_loader(cfg: dict[str, Any], num_nodes: int) -> tuple[DataLoader, int]:
    """A shuffled loader over every client's training data, and the mean local steps
    a client makes per round (epochs x batches, at least ``min-local-steps``)."""
    parts = [node_data(cfg, {"partition-id": pid, "num-partitions": num_nodes})[0]
             for pid in range(num_nodes)]
    per_client = [max(cfg["min-local-steps"], cfg["local-epochs"] * len(p.train))
                  for p in parts]
    generator = torch.Generator().manual_seed(cfg["seed"])
    union = ConcatDataset([p.train.dataset for p in parts])
    loader = DataLoader(union, batch_size=cfg["batch-size"], shuffle=True, generator=generator)
    return loader, round(sum(per_client) / num_nodes)


def initial_network(cfg: dict[str, Any]) -> nn.Module:
    """The trainable network of the parsed run config `cfg`'s method before round 1."""
    torch.manual_seed(cfg["seed"])
    spec = get_spec(cfg["dataset"])
    model = run_config.run_model(cfg)  # the run's network (HideNseek's: its offsets at 0)
    strategy = build_strategy(cfg, model, (spec.in_channels, spec.image_size, spec.image_size))
    return strategy.evaluation_model(strategy.initial_arrays())


def ceiling(config: dict[str, Any], num_nodes: int) -> dict[str, Any]:
    """Train `config`'s method's network centrally (see the module doc); return its
    accuracy, the steps and the seconds taken."""
    cfg = run_config.parse({**config, "method": ceiling_method(config["method"])})
    net = initial_network(cfg)
    loader, steps_per_round = union_loader(cfg, num_nodes)
    steps = steps_per_round * cfg["num-server-rounds"]
    start = time.perf_counter()
    training.train(net, loader, 1, cfg["lr"], cfg["optimizer"], cfg["momentum"], steps)
    accuracy = training.evaluate(net, central_loader(cfg))[1]
    return {"network": cfg["method"], "accuracy": accuracy, "steps": steps,
            "optimizer": cfg["optimizer"], "lr": cfg["lr"],
            "seconds": time.perf_counter() - start}


def _training_key(config: dict[str, Any]) -> str:
    """What a ceiling depends on: the common options that shape data, network and
    training, and a mask method's own options."""
    method = ceiling_method(config["method"])
    keys = [k for k in run_config.COMMON if k not in NOT_TRAINING]
    if method in MASK_METHODS:  # their density and options shape the network
        keys += ["density", *REGISTRY[method].options]
    return json.dumps({"method": method, **{k: config.get(k) for k in keys}}, sort_keys=True)


def ceilings(configs: dict[str, dict[str, Any]], num_nodes: int) -> dict[str, dict[str, Any]]:
    """The ceiling of every entry's run config; entries with the same network and
    settings share one training."""
    done: dict[str, dict[str, Any]] = {}
    result = {}
    for entry, config in configs.items():
        key = _training_key(config)
        if key not in done:
            done[key] = ceiling(config, num_nodes)
        result[entry] = done[key]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config (JSON values)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    common = {**parse_pairs(args.run_config), "num-server-rounds": args.rounds}
    figures = ceilings({m: {**common, "method": m} for m in args.methods}, args.num_supernodes)
    for method, figure in figures.items():
        print(f"{method:12s} {figure['network']:10s} accuracy {figure['accuracy']:.4f}  "
              f"{figure['steps']} steps ({figure['optimizer']}, lr {figure['lr']})  "
              f"{figure['seconds']:.1f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
