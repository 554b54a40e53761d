"""Local training settings carried in every message's ConfigRecord."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from flwr.app import ConfigRecord, Message
from torch import nn
from torch.utils.data import DataLoader

from fedmask.nn import training
from fedmask.wire.records import CONFIG


@dataclass(frozen=True)
class LocalSettings:
    """How a client trains locally; defaults apply to keys the server omits."""

    local_epochs: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    personal_epochs: int = 1
    min_local_steps: int = 0
    loss: str = "cross-entropy"
    personal_tuning: str = "weights"
    personal_lr: float = 0.005

    def to_config(self) -> ConfigRecord:
        """The settings as a ConfigRecord with kebab-case keys."""
        return ConfigRecord({k.replace("_", "-"): v for k, v in self.__dict__.items()})

    @classmethod
    def from_message(cls, msg: Message) -> LocalSettings:
        """Read the settings from `msg`'s ``config`` record."""
        config = msg.content.config_records.get(CONFIG, ConfigRecord())
        defaults = cls()
        return cls(**{k: type(v)(config.get(k.replace("_", "-"), v))
                      for k, v in defaults.__dict__.items()})

    def logit_shift(self, label_counts: torch.Tensor) -> torch.Tensor | None:
        """What `loss` adds to the logits in training, for a client with
        `label_counts`: nothing (``cross-entropy``) or their log prior (``balanced``)."""
        if self.loss not in training.LOSSES:
            raise ValueError(f"loss: {self.loss!r} is not one of {list(training.LOSSES)}")
        return training.log_prior(label_counts) if self.loss == "balanced" else None

    @property
    def tunes_weights(self) -> bool:
        """Whether personal fine-tuning trains the global network's weights
        (``personal-tuning = "weights"``) rather than what a round trains."""
        if self.personal_tuning not in training.PERSONAL_TUNINGS:
            raise ValueError(f"personal-tuning: {self.personal_tuning!r} is not one of "
                             f"{list(training.PERSONAL_TUNINGS)}")
        return self.personal_tuning == "weights"

    def personal(self) -> LocalSettings:
        """The settings personal fine-tuning trains with: SGD at `personal_lr` on the
        weights, or these (the round's optimiser and lr)."""
        return replace(self, optimizer="sgd", lr=self.personal_lr) if self.tunes_weights else self

    def fit(self, model: nn.Module, loader: DataLoader, epochs: int, min_steps: int = 0,
            device: torch.device = training.CPU, precision: str = "float32",
            logit_shift: torch.Tensor | None = None) -> float:
        """Train `model` for `epochs`, continued to at least `min_steps` batches, with
        these settings on `device` at `precision` (the logits plus `logit_shift` in
        the loss, if given); return the mean loss."""
        return training.train(model, loader, epochs, self.lr, self.optimizer, self.momentum,
                              min_steps, device, precision, logit_shift)
