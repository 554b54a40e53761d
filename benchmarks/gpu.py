"""Benchmark: client training speed on a GPU against the CPU, and a paper-style run.

1. Client steps per second (batch 64, random FashionMNIST-shaped data) of each
   kind of network a method trains: dense (FedAvg), sign supermask (HideNseek),
   Bernoulli supermask (FedPM), fixed-mask weights (MPFL, SSFL, FedSparsify), for
   ``cnn``, ``conv6`` and ``resnet18``, on the CPU and on ``--device``; the ratio
   is the speed-up.
2. A short ``paper``-style federation (100 clients, 10% per round, ``conv6``,
   FashionMNIST, HideNseek and FedAvg) in-process on ``--device``: central accuracy
   and seconds.

A machine with a GPU runs it in a few minutes; ``--smoke`` makes it a few seconds
on any CPU (the test suite runs it so). Writes JSON.

Usage::

    .venv/bin/python benchmarks/gpu.py --device cuda --run-config data-root=\\"../shared/data\\" \\
        --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loopback import run_federation
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmask.launch import parse_pairs
from fedmask.methods.fedpm import wire as fedpm
from fedmask.methods.hidenseek import wire as hidenseek
from fedmask.methods.masked.client import trainable
from fedmask.nn import training
from fedmask.nn.models import build_model, num_prunable
from fedmask.nn.placement import resolve_device

MODELS = ("cnn", "conv6", "resnet18")
BATCH = 64


def _network(kind: str, model: nn.Module) -> tuple[nn.Module, str, float]:
    """`model` as the network a method of `kind` trains, with its optimiser and lr."""
    n = num_prunable(model)
    half = np.random.default_rng(0).random(n) < 0.5
    if kind == "sign-supermask":
        return hidenseek.sign_net(model, half, np.ones(int(half.sum()), bool)), "adam", 0.01
    if kind == "bernoulli-supermask":
        return fedpm.mask_net(model, np.full(n, 0.5)), "adam", 0.1
    if kind == "fixed-mask":
        return trainable(model, half), "sgd", 0.02
    return model, "sgd", 0.02


KINDS = ("dense", "sign-supermask", "bernoulli-supermask", "fixed-mask")


def steps_per_second(kind: str, model_name: str, device: torch.device, steps: int) -> float:
    """Training steps per second of `kind` on `model_name` at `device` (after one
    warm-up step)."""
    model = build_model(model_name, 10, 1, 28)
    net, optimizer, lr = _network(kind, model)
    x, y = torch.randn(BATCH * steps, 1, 28, 28), torch.randint(0, 10, (BATCH * steps,))
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    training.train(net, DataLoader(TensorDataset(x[:BATCH], y[:BATCH]), batch_size=BATCH),
                   1, lr, optimizer, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    training.train(net, loader, 1, lr, optimizer, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def speeds(device: torch.device, models: tuple[str, ...], steps: int) -> list[dict[str, Any]]:
    """Steps per second of every (model, kind) on the CPU and on `device`."""
    rows = []
    for model_name in models:
        for kind in KINDS:
            cpu = steps_per_second(kind, model_name, torch.device("cpu"), steps)
            other = steps_per_second(kind, model_name, device, steps)
            rows.append({"model": model_name, "network": kind, "cpu_steps_s": cpu,
                         "device_steps_s": other, "speedup": other / cpu})
            print(f"{model_name:9s} {kind:20s} cpu {cpu:8.1f} steps/s  {device} "
                  f"{other:8.1f} steps/s  x{other / cpu:.1f}", flush=True)
    return rows


def paper_run(device: torch.device, common: dict[str, Any], rounds: int, clients: int
              ) -> list[dict[str, Any]]:
    """HideNseek and FedAvg, paper-style (10% of `clients` per round, conv6), on `device`."""
    rows = []
    for method in ("hidenseek", "fedavg"):
        config = {"dataset": "fashion-mnist", "model": "conv6", "partition": "dirichlet",
                  "alpha": 0.3, "fraction-train": 0.1, "fraction-evaluate": 0.0,
                  **common, "method": method, "num-server-rounds": rounds,
                  "device": str(device), "min-nodes": max(1, clients // 10)}
        start = time.monotonic()
        results = run_federation(config, clients)
        seconds = time.monotonic() - start
        accuracy = [r["accuracy"] for r in results["rounds"]]
        rows.append({"method": method, "rounds": rounds, "clients": clients,
                     "accuracy": accuracy, "seconds": seconds})
        print(f"paper-style {method:9s} {clients} clients, {rounds} rounds: accuracy "
              f"{accuracy[-1]:.4f}, {seconds:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="device to compare with the CPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps, `cnn` only, a 2-round 10-client run: any CPU")
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config of the paper-style run (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    models, steps = (("cnn",), 3) if args.smoke else (MODELS, args.steps)
    rounds, clients = (2, 10) if args.smoke else (args.rounds, args.clients)
    common = parse_pairs(args.run_config)
    if args.smoke:
        common = {"train-limit": 64, "test-limit": 200, "synflow-iterations": 5,
                  "min-local-steps": 2, **common}
    result = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else device.type, "smoke": args.smoke,
              "speeds": speeds(device, models, steps),
              "paper_style": paper_run(device, common, rounds, clients)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
