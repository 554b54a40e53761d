"""Seeded frozen networks: what the server announces and how a client rebuilds it.

Mask-only methods never send float weights. The server sends the seed, the
init scheme, the version of the random-number definition and a short weight
hash; the client rebuilds the weights into its own architecture and refuses to
train if it does not know the version or the hash differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord
from torch import nn

from fedmask.nn.models import seeded_init, weight_hash
from fedmask.nn.portable_random import GENERATOR
from fedmask.wire.records import config_value

SEED, INIT, HASH, GENERATOR_KEY = "seed", "init", "weight-hash", "weight-generator"


class WeightHashError(RuntimeError):
    """The client's rebuilt weights differ from the server's."""


class GeneratorError(ValueError):
    """The seeded weights were made by a random-number definition this fedmask does
    not compute (or by one before versions were named)."""


@dataclass(frozen=True)
class SeededNet:
    """Everything a client needs to rebuild the frozen weights."""

    seed: int
    init: str
    weight_hash: str
    generator: str = GENERATOR

    @classmethod
    def announce(cls, model: nn.Module, seed: int, init: str) -> SeededNet:
        """Initialise `model` in place from (seed, init) and describe it."""
        seeded_init(model, seed, init)
        return cls(seed, init, weight_hash(model))

    def to_config(self, config: ConfigRecord) -> None:
        """Write the description into `config` (in place)."""
        config[SEED], config[INIT], config[HASH] = self.seed, self.init, self.weight_hash
        config[GENERATOR_KEY] = self.generator

    @classmethod
    def from_config(cls, config: ConfigRecord) -> SeededNet:
        """Read the description from a received `config`; GeneratorError when it
        names no generator (written before versions were named)."""
        if GENERATOR_KEY not in config:
            raise GeneratorError(
                f"{GENERATOR_KEY}: missing: the seeded weights were made by a fedmask "
                f"before 2026-12 (torch's generator, whose numbers differ by CPU); this "
                f"fedmask computes {GENERATOR!r}: retrain or re-export with it")
        return cls(config_value(config, SEED, int), config_value(config, INIT, str),
                   config_value(config, HASH, str), config_value(config, GENERATOR_KEY, str))

    def rebuild(self, model: nn.Module) -> nn.Module:
        """Initialise `model` in place and check the hash; raise GeneratorError for
        an unknown generator, WeightHashError for other weights."""
        if self.generator != GENERATOR:
            raise GeneratorError(
                f"{GENERATOR_KEY}: {self.generator!r} is not known to this fedmask, which "
                f"computes {GENERATOR!r}: run the same fedmask release on server and nodes")
        seeded_init(model, self.seed, self.init)
        got = weight_hash(model)
        if got != self.weight_hash:
            raise WeightHashError(
                f"{HASH}: rebuilt weights hash to {got}, server announced "
                f"{self.weight_hash}; the client's model differs from the server's")
        return model
