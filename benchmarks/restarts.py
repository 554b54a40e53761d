"""Benchmark: where HideNseek loses accuracy in a federation, measured without one.

HideNseek's sign supermask is trained centrally (as in ``ceiling.py``: the union
of the clients' training data, as many steps as a client makes over the run)
in rounds of ``--steps`` steps, restarting at each round what a client restarts:
``none`` (the central ceiling), ``optimizer`` (a fresh Adam each round, the
scores carried on) or ``scores`` (also the scores, back to ``|w| * sign(s)``,
as every client starts from ``|w| * g``). The accuracy on the central test set
after every tenth round goes to stdout and, with ``--out``, to JSON.

Usage::

    .venv/bin/python benchmarks/restarts.py --run-config data-root=\\"../shared/data\\" \\
        partition=\\"dirichlet\\" train-limit=400 --out benchmarks/results/restarts.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from ceiling import initial_network, union_loader
from torch import nn

from fedmask import config as run_config
from fedmask.launch import parse_pairs
from fedmask.nn import training
from fedmask.nn.supermask import SignSupermask, frozen_weight, supermasks
from fedmask.server.app import central_loader

RESTARTS = ("none", "optimizer", "scores")


@torch.no_grad()
def restart_scores(net: nn.Module) -> None:
    """Every score back to ``|w| * sign(s)``, as a client starts from ``|w| * g``."""
    for name, mask in supermasks(net).items():
        scores = cast(SignSupermask, mask).scores
        scores.copy_(frozen_weight(net, name).abs() * torch.where(scores >= 0, 1.0, -1.0))


def train(config: dict[str, Any], restart: str, steps: int, num_nodes: int) -> list[float]:
    """Train in rounds of `steps` steps with `restart`; the accuracy every 10 rounds."""
    cfg = run_config.parse({**config, "method": "hidenseek"})
    net = initial_network(cfg)  # HideNseek: scores at |w|
    loader, per_round = union_loader(cfg, num_nodes)
    rounds = per_round * cfg["num-server-rounds"] // steps
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = training.make_optimizer(params, cfg["optimizer"], cfg["lr"], cfg["momentum"])
    accuracy = []
    for index in range(rounds):
        if restart != "none":
            optimizer = training.make_optimizer(params, cfg["optimizer"], cfg["lr"],
                                                cfg["momentum"])
        if restart == "scores":
            restart_scores(net)
        net.train()
        for x, y in itertools.islice(batches, steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        if (index + 1) % 10 == 0 or index + 1 == rounds:
            accuracy.append(training.evaluate(net, central_loader(cfg))[1])
    return accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-supernodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--restarts", nargs="+", default=list(RESTARTS), choices=RESTARTS)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config (JSON values)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    config = {**parse_pairs(args.run_config), "num-server-rounds": args.rounds}
    figures = {}
    for restart in args.restarts:
        figures[restart] = train(config, restart, args.steps, args.num_supernodes)
        print(f"restart {restart:9s} accuracy every 10 rounds: "
              + " ".join(f"{a:.4f}" for a in figures[restart]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"config": config, "steps": args.steps,
                                        "accuracy": figures}, indent=2))


if __name__ == "__main__":
    main()
