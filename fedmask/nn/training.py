"""Local training and evaluation loops shared by every method."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fedmask.nn.placement import autocast
from fedmask.nn.supermask import fixed_samples

CPU = torch.device("cpu")

OPTIMIZERS = ("sgd", "adam")
# ``loss``: plain cross-entropy, or the balanced softmax (cross-entropy of the logits
# shifted by the log of the client's label distribution; absent classes at MIN_PRIOR).
LOSSES = ("cross-entropy", "balanced")
# What personal fine-tuning trains: the global network's weights, or what a round trains.
PERSONAL_TUNINGS = ("weights", "training")
MIN_PRIOR = 1e-4
# Default of ``min-local-steps``: data-poor clients train at least this many batches a
# round (chosen on validation data by benchmarks/sweep.py).
MIN_LOCAL_STEPS = 20


def make_optimizer(params: list[nn.Parameter], name: str, lr: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (default) or Adam over `params`."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer: unknown optimizer {name!r}; allowed: {list(OPTIMIZERS)}")


def log_prior(label_counts: torch.Tensor) -> torch.Tensor:
    """The balanced softmax's logit shift: the log of the label distribution
    `label_counts` (examples per class) describe, each class at least MIN_PRIOR."""
    prior = label_counts.double() / label_counts.sum().clamp_min(1)
    return prior.clamp_min(MIN_PRIOR).log().float()


def padded(shift: torch.Tensor, width: int) -> torch.Tensor:
    """`shift` for `width` classes: the classes past its end (a client whose labels
    stop below the highest, e.g. a device's own folders) at MIN_PRIOR."""
    return F.pad(shift, (0, width - len(shift)), value=math.log(MIN_PRIOR))


def shifted(logits: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """`logits` plus `shift` (:func:`padded` to their width), or `logits` when None."""
    return logits if shift is None else logits + padded(shift, logits.shape[1])


def batches(loader: DataLoader, epochs: int, min_steps: int = 0) -> Iterator[Any]:
    """`epochs` passes over `loader`, continued (passing over it again) until at
    least `min_steps` batches were given."""
    done = 0
    for _ in range(epochs):
        for batch in loader:
            yield batch
            done += 1
    while done < min_steps:
        before = done
        for batch in loader:
            if done == min_steps:
                return
            yield batch
            done += 1
        if done == before:  # an empty loader
            return


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float,
          optimizer: str = "sgd", momentum: float = 0.9, min_steps: int = 0,
          device: torch.device = CPU, precision: str = "float32",
          logit_shift: torch.Tensor | None = None) -> float:
    """Train the parameters of `model` that require grad for `epochs` passes over
    `loader`, continued to at least `min_steps` batches, on `device` (the model
    moves there) at `precision` (:mod:`fedmask.nn.placement`), on the cross-entropy
    of the logits plus `logit_shift` (if given: :func:`log_prior`); return the mean
    loss."""
    model.to(device)
    shift = None if logit_shift is None else logit_shift.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, momentum)
    model.train()
    total, count = 0.0, 0
    for x, y in batches(loader, epochs, min_steps):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = model(x)
            loss = F.cross_entropy(shifted(out, shift), y)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device = CPU,
             precision: str = "float32", logit_shift: torch.Tensor | None = None
             ) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of `model` on `loader`, on
    `device` (the model moves there) at `precision`, predicting from its logits
    plus `logit_shift` (if given: :func:`log_prior`)."""
    model.to(device).eval()
    shift = None if logit_shift is None else logit_shift.to(device)
    loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            out = shifted(model(x).float(), shift)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        count += len(y)
    if count == 0:
        raise ValueError("evaluate: the loader holds no examples")
    return loss / count, correct / count


def evaluate_metrics(model: nn.Module, loader: DataLoader, samples: int = 0,
                     device: torch.device = CPU, precision: str = "float32"
                     ) -> dict[str, float]:
    """``loss`` and ``accuracy`` of `model` (on `device`, at `precision`); with
    `samples` > 0 also ``sampled-loss`` and ``sampled-accuracy``, the means over that
    many masks sampled from its Bernoulli supermasks (one mask per pass over `loader`)."""
    loss, accuracy = evaluate(model, loader, device, precision)
    metrics = {"loss": loss, "accuracy": accuracy}
    if samples > 0:
        passes = []
        for _ in range(samples):
            with fixed_samples(model):
                passes.append(evaluate(model, loader, device, precision))
        metrics["sampled-loss"] = sum(p[0] for p in passes) / samples
        metrics["sampled-accuracy"] = sum(p[1] for p in passes) / samples
    return metrics
