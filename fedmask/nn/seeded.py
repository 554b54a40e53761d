"""Seeded frozen networks: what the server announces and how a client rebuilds it.

Mask-only methods never send float weights. The server sends the seed, the
init scheme and a short weight hash; the client rebuilds the weights into its
own architecture and refuses to train if the hash differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord
from torch import nn

from fedmask.nn.models import seeded_init, weight_hash
from fedmask.wire.records import config_value

SEED, INIT, HASH = "seed", "init", "weight-hash"


class WeightHashError(RuntimeError):
    """The client's rebuilt weights differ from the server's."""


@dataclass(frozen=True)
class SeededNet:
    """Everything a client needs to rebuild the frozen weights."""

    seed: int
    init: str
    weight_hash: str

    @classmethod
    def announce(cls, model: nn.Module, seed: int, init: str) -> SeededNet:
        """Initialise `model` in place from (seed, init) and describe it."""
        seeded_init(model, seed, init)
        return cls(seed, init, weight_hash(model))

    def to_config(self, config: ConfigRecord) -> None:
        """Write the description into `config` (in place)."""
        config[SEED], config[INIT], config[HASH] = self.seed, self.init, self.weight_hash

    @classmethod
    def from_config(cls, config: ConfigRecord) -> SeededNet:
        """Read the description from a received `config`."""
        return cls(config_value(config, SEED, int), config_value(config, INIT, str),
                   config_value(config, HASH, str))

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Initialise `model` in place and check the hash; raise WeightHashError."""
        seeded_init(model, self.seed, self.init)
        got = weight_hash(model)
        if got != self.weight_hash:
            raise WeightHashError(
                f"{HASH}: rebuilt weights hash to {got}, server announced "
                f"{self.weight_hash}; the client's model or torch build differs")
        return model
