"""Benchmark: a poisoned minority. Central accuracy when a fraction f of the clients
send adversarial but well-formed updates.

Every method runs on the same data and seed (IID, 20 clients, every client trains
every round) at each f in ``--fractions``; the first ``round(f * clients)``
partitions are adversaries for the whole run. After training as usual, an
adversary changes its trained module before fedmask encodes the reply:

- HideNseek and FedPM: the inverted mask (scores negated: HideNseek's signs flip,
  FedPM's mask is sampled from ``1 - theta``);
- MPFL: in its vote rounds the inverted vote (magnitudes reciprocated, so the vote
  prunes the weights an honest client keeps), in its FedAvg rounds the weights
  negated and scaled;
- SSFL, FedSparsify (global) and FedAvg: the weights negated and scaled by
  ``--scale`` (the kept values only: the mask stays the server's).

The messages are valid, so validation accepts them (the benchmark fails if a reply
of round 1 is rejected; once an attack has broken the global model, honest replies
may be rejected too, e.g. for non-finite values: counted as ``rejected_replies``).
Runs go through ``loopback.py`` (fedmask's server and client code in one process
per run). Writes ``robustness.{json,md,png}`` under ``--out``, and each run's row
under ``--out/robustness-runs/`` as it finishes (reused by a rerun of the same
setting).

Usage::

    .venv/bin/python benchmarks/robustness.py --run-config data-root=\\"../shared/data\\"
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from loopback import run_federation
from torch import nn

from fedmask.client import method_of, node
from fedmask.launch import parse_pairs
from fedmask.methods.masked.wire import PHASE
from fedmask.wire.records import CONFIG, config_value

METHODS = ("fedavg", "hidenseek", "fedpm", "mpfl", "ssfl", "fedsparsify")
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.45)
MASK_METHODS = ("hidenseek", "fedpm")
# The setting every run shares; MPFL and SSFL at density 0.5 (MPFL: 4 vote rounds,
# then masked FedAvg).
BASE = {"dataset": "fashion-mnist", "partition": "iid", "train-limit": 300,
        "fraction-train": 1.0, "fraction-evaluate": 0.0, "test-limit": 2000,
        "density": 0.5}
SMOKE = {"train-limit": 64, "test-limit": 200, "synflow-iterations": 5,
         "min-local-steps": 2}


def attack(msg: Message, net: nn.Module, scale: float) -> None:
    """Turn the trained `net` into an adversary's (see the module docstring)."""
    method = method_of(msg).name
    voting = method == "mpfl" and config_value(msg.content.config_records[CONFIG], PHASE,
                                               int) == 1
    with torch.no_grad():
        for param in (p for p in net.parameters() if p.requires_grad):
            if method in MASK_METHODS:
                param.neg_()
            elif voting:
                param.copy_(param.sign() / (param.abs() + 1e-12))
            else:
                param.mul_(-scale)


def answer(msg: Message, context: Context, phase: str, adversaries: int,
           scale: float) -> Message:
    """fedmask's ClientApp body; partitions below `adversaries` poison their training
    replies."""
    if int(context.node_config["partition-id"]) >= adversaries:
        return node.handle(msg, context, phase)
    poisoned = functools.partial(node.train, before_reply=functools.partial(attack, scale=scale))
    return node.handle(msg, context, phase, {**node.HANDLERS, "train": poisoned})


def run(method: str, fraction: float, config: dict[str, Any], clients: int,
        scale: float) -> dict[str, Any]:
    """One run: `method` with round(`fraction` * `clients`) adversaries. Fails if a
    reply of round 1 was rejected: the attacks must stay well-formed (later rounds
    may reject honest replies of a global model the attack has broken, e.g. to
    non-finite values)."""
    torch.set_num_threads(1)
    adversaries = round(fraction * clients)
    start = time.perf_counter()
    results = run_federation({**config, "method": method}, clients,
                             functools.partial(answer, adversaries=adversaries, scale=scale))
    rounds = results["rounds"]
    if rounds[0]["rejected_clients"]:
        raise RuntimeError(f"{method} f={fraction}: round 1 rejected "
                           f"{rounds[0]['rejected_clients']}; the attacks must stay valid")
    return {"method": method, "fraction": fraction, "adversaries": adversaries,
            "accuracy": [r["accuracy"] for r in rounds], "final_accuracy": rounds[-1]["accuracy"],
            "best_accuracy": max(r["accuracy"] for r in rounds),
            "rejected_replies": sum(len(r["rejected_clients"]) for r in rounds),
            "seconds": time.perf_counter() - start}


def run_once(folder: Path, method: str, fraction: float, config: dict[str, Any],
             clients: int, scale: float) -> dict[str, Any]:
    """:func:`run`, its row kept in `folder`: a row of the same setting found there
    is reused (an interrupted benchmark goes on where it stopped)."""
    setting = {"config": config, "clients": clients, "scale": scale}
    path = folder / f"{method}-{fraction:g}.json"
    if path.exists() and (kept := json.loads(path.read_text()))["setting"] == setting:
        return dict(kept["row"])
    row = run(method, fraction, config, clients, scale)
    path.write_text(json.dumps({"setting": setting, "row": row}))
    return row


def markdown(rows: list[dict[str, Any]], fractions: list[float]) -> str:
    """Final central accuracy per method (rows) and adversary fraction (columns)."""
    head = "| method | " + " | ".join(f"f = {f:g}" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["fraction"]: r["final_accuracy"] for r in rows if r["method"] == method}
        lines.append(f"| {method} | " + " | ".join(f"{cells[f]:.3f}" for f in fractions) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Final central accuracy against the adversary fraction, one line per method."""
    import matplotlib  # noqa: PLC0415 - only the plotting needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, axis = plt.subplots(figsize=(6.5, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        axis.plot([r["fraction"] for r in mine], [r["final_accuracy"] for r in mine],
                  marker="o", label=method)
    axis.set(xlabel="fraction of adversarial clients", ylabel="central accuracy (last round)",
             title=title)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--fractions", nargs="*", type=float, default=list(FRACTIONS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--scale", type=float, default=4.0,
                        help="weight methods: adversaries send -scale * their weights")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--smoke", action="store_true", help="tiny data: seconds per run")
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config added to every run (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if any(not 0 <= f < 0.5 for f in args.fractions):
        parser.error("--fractions: each in [0, 0.5) (a minority)")
    config = {**BASE, **(SMOKE if args.smoke else {}), "num-server-rounds": args.rounds,
              **parse_pairs(args.run_config)}
    jobs = [(m, f) for m in args.methods for f in args.fractions]
    kept = args.out / "robustness-runs"
    kept.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_once, kept, m, f, config, args.clients, args.scale)
                   for m, f in jobs]
        rows = [future.result() for future in futures]
    for row in rows:
        print(f"{row['method']:12s} f={row['fraction']:<5g} final {row['final_accuracy']:.4f} "
              f"best {row['best_accuracy']:.4f} ({row['seconds']:.0f} s)")
    setting = {"clients": args.clients, "rounds": args.rounds, "scale": args.scale,
               "smoke": args.smoke, "config": config}
    (args.out / "robustness.json").write_text(json.dumps({**setting, "runs": rows}, indent=2))
    (args.out / "robustness.md").write_text(markdown(rows, args.fractions))
    plot(rows, f"{config['dataset']}, {args.clients} clients, {args.rounds} rounds",
         args.out / "robustness.png")
    print(f"written: {args.out / 'robustness.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
