"""Benchmark: do HideNseek's and FedPM's supermasks train under the optimisers people
write in their own loops?

A user's ``train()`` builds its own optimiser over ``net.parameters()`` at its own
learning rate. This runs such a loop (SGD with or without momentum and weight
decay, Adam, AdamW) on the module each method trains, centrally on one client's
worth of data, and reports the test accuracy of the resulting global network:

- ``fedmask``: the supermasks as fedmask builds them (scores stored in units of
  the loop's lr over the method's reference lr, gradients rescaled to unit RMS per
  layer, SGD momentum's gain undone; :mod:`fedmask.nn.supermask`);
- ``raw``: the paper's parametrisation, measured in the same run as the baseline
  (scores ``|w| g`` or ``logit(theta)`` trained as they are, momentum included).

HideNseek runs ``--rounds`` rounds of ``--steps`` steps, each restarting its scores
from the signs the previous one ended with (one client's vote); FedPM trains its
probabilities for ``--rounds * --steps`` steps from 0.5 (the global theta of round
1). Both use the seeded network of fedmask's app and the quickstart-style ``Net``
of ``examples/quickstart-fedmask`` (biases, as a user's model has).

``--score-lrs`` instead runs fedmask's variant at several reference rates (the
methods' ``SCORE_LR``: the loop lr at which the scores are stored unscaled) and
prints, per rate, each loop's accuracy and their mean and lowest: how SCORE_LR was
chosen.

Usage::

    .venv/bin/python benchmarks/optimizers.py --data-root ../shared/data \\
        --out benchmarks/results/optimizers.json
    .venv/bin/python benchmarks/optimizers.py --methods hidenseek \\
        --score-lrs 0.01 0.005 0.0033 0.002 --out benchmarks/results/optimizers-score-lr.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmask.data.datasets import load_split
from fedmask.methods.fedpm import client as fedpm_client
from fedmask.methods.hidenseek import client as hidenseek_client
from fedmask.methods.hidenseek.wire import read_signs
from fedmask.nn.models import seeded_init
from fedmask.nn.pruning import prunable_names, synflow_mask
from fedmask.nn.supermask import BernoulliSupermask, SignSupermask
from fedmask.wire.bits import flatten_masks
from fedmask.wire.records import attach_flat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "quickstart-fedmask"))
from quickstart_fedmask.task import Net  # noqa: E402 - the example's model, a user's kind

# (name, optimiser, lr, momentum, weight decay): the loops a PyTorch user writes.
LOOPS = [
    ("sgd lr0.01", "sgd", 0.01, 0.0, 0.0),
    ("sgd lr0.1", "sgd", 0.1, 0.0, 0.0),
    ("sgd lr0.01 m0.9", "sgd", 0.01, 0.9, 0.0),
    ("sgd lr0.1 m0.9", "sgd", 0.1, 0.9, 0.0),
    ("sgd lr0.1 m0.9 wd5e-4", "sgd", 0.1, 0.9, 5e-4),
    ("adam lr1e-3", "adam", 1e-3, 0.0, 0.0),
    ("adam lr1e-2", "adam", 1e-2, 0.0, 0.0),
    ("adamw lr1e-3", "adamw", 1e-3, 0.0, 0.01),
]


class Raw(nn.Module):
    """Mixin: the papers' parametrisation, scores a plain parameter trained as they
    are (gradient as it comes, SGD's momentum as on any parameter)."""

    scores: nn.Parameter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores = nn.Parameter(self.scores.detach().clone())

    def trainable_scores(self) -> Tensor:
        return self.scores


class RawSign(Raw, SignSupermask):
    """The paper's sign supermask: scores ``|w| g``."""


class RawBernoulli(Raw, BernoulliSupermask):
    """The paper's Bernoulli supermask: logits ``logit(theta)``."""


def optimiser(params: list[nn.Parameter], name: str, lr: float, momentum: float,
              decay: float) -> torch.optim.Optimizer:
    """The optimiser a user's loop builds."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=decay)


def user_train(net: nn.Module, x: Tensor, y: Tensor, steps: int, loop: tuple, seed: int
               ) -> None:
    """A user's loop: its own optimiser over ``net.parameters()``, batches of 32."""
    _, name, lr, momentum, decay = loop
    opt = optimiser(list(net.parameters()), name, lr, momentum, decay)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        batch = torch.randint(0, len(y), (32,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        opt.step()


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test accuracy of `net` in eval mode."""
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def seeded_net(init: str, seed: int) -> nn.Module:
    """The frozen seeded network (fedmask's init of a user's Net)."""
    return seeded_init(Net(), seed, init).requires_grad_(False)


def hidenseek(x: Tensor, y: Tensor, tx: Tensor, ty: Tensor, loop: tuple, variant: str,
              args: argparse.Namespace, seed: int, score_lr: float | None = None) -> float:
    """Rounds of sign-supermask training, each from the previous round's signs."""
    net = seeded_net("kaiming-normal", seed)
    prune = flatten_masks(synflow_mask(net, 0.5, (1, 28, 28), 20), prunable_names(net))
    signs = np.ones(int(prune.sum()), dtype=bool)
    score_lr = score_lr or hidenseek_client.SCORE_LR
    ratio = loop[2] / score_lr if variant == "fedmask" else 1
    kind = SignSupermask if variant == "fedmask" else RawSign
    for r in range(args.rounds):
        model = seeded_net("kaiming-normal", seed)
        full = np.ones(prune.size, dtype=np.float32)
        full[prune] = np.where(signs, 1.0, -1.0)
        attach_flat(model, lambda w, p, s: kind(w, p, s, lr_ratio=ratio), prune, full)
        user_train(model, x, y, args.steps, loop, seed * 1000 + r)
        signs = read_signs(model, prune)
    return accuracy(model, tx, ty)


def fedpm(x: Tensor, y: Tensor, tx: Tensor, ty: Tensor, loop: tuple, variant: str,
          args: argparse.Namespace, seed: int, score_lr: float | None = None) -> float:
    """Probability-supermask training from theta = 0.5; the thresholded mask's accuracy."""
    model = seeded_net("signed-constant", seed)
    score_lr = score_lr or fedpm_client.SCORE_LR
    ratio = loop[2] / score_lr if variant == "fedmask" else 1
    kind = BernoulliSupermask if variant == "fedmask" else RawBernoulli
    theta = np.full(sum(p.numel() for n, p in model.named_parameters()
                        if n in prunable_names(model)), 0.5, dtype=np.float32)
    attach_flat(model, lambda w, t: kind(t, lr_ratio=ratio), theta)
    user_train(model, x, y, args.rounds * args.steps, loop, seed)
    return accuracy(model, tx, ty)


METHODS = {"hidenseek": hidenseek, "fedpm": fedpm}


def score_lr_rows(x: Tensor, y: Tensor, tx: Tensor, ty: Tensor, args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """fedmask's variant at each reference rate of ``--score-lrs``: per loop the mean
    accuracy over the seeds, and the mean and lowest of those over the loops."""
    rows = []
    for method in args.methods:
        for score_lr in args.score_lrs:
            accs = [statistics.mean(METHODS[method](x, y, tx, ty, loop, "fedmask", args, seed,
                                                    score_lr) for seed in range(args.seeds))
                    for loop in LOOPS]
            rows.append({"method": method, "score_lr": score_lr, "per_loop": accs,
                         "mean": statistics.mean(accs), "lowest": min(accs)})
            print(f"{method:10s} SCORE_LR {score_lr:<8g} " + " ".join(f"{a:.3f}" for a in accs)
                  + f"  mean {rows[-1]['mean']:.3f}  lowest {rows[-1]['lowest']:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--score-lrs", nargs="*", type=float, default=[],
                        help="instead: fedmask's variant at each of these reference rates "
                             "(SCORE_LR), mean and lowest accuracy over the loops")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, test = load_split(args.dataset, args.data_root, True), \
        load_split(args.dataset, args.data_root, False)
    x, y = train.tensors[0][:args.train_size], train.tensors[1][:args.train_size]
    tx, ty = test.tensors[0][:2000], test.tensors[1][:2000]
    rows: list[dict[str, Any]] = []
    if args.score_lrs:
        rows = score_lr_rows(x, y, tx, ty, args)
    for method in [] if args.score_lrs else args.methods:
        for loop in LOOPS:
            row: dict[str, Any] = {"method": method, "loop": loop[0]}
            for variant in ("raw", "fedmask"):
                start = time.perf_counter()
                accs = [METHODS[method](x, y, tx, ty, loop, variant, args, seed)
                        for seed in range(args.seeds)]
                row[variant] = statistics.mean(accs)
                row[f"{variant}-all"] = accs
                row[f"{variant}-seconds"] = time.perf_counter() - start
            row["ratio"] = row["fedmask"] / row["raw"]
            rows.append(row)
            print(f"{method:10s} {loop[0]:24s} raw {row['raw']:.3f}  fedmask "
                  f"{row['fedmask']:.3f}  ratio {row['ratio']:.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
