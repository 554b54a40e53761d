"""MPFL server: a consensus pruning mask from client votes, then masked FedAvg."""

from __future__ import annotations

import math
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from torch import nn

from fedmask.methods.masked.wire import decode_client_mask
from fedmask.methods.mpfl import wire as wire
from fedmask.nn.pruning import PRUNE_STRUCTURES, flat_weights
from strategies.base import MODEL_INIT
from strategies.masked_fedavg import MaskedFedAvg


def consensus(votes: np.ndarray, magnitude: np.ndarray, current: np.ndarray,
              keep: int) -> np.ndarray:
    """The `keep` positions of `current` with most votes, ties to larger `magnitude`
    (then to the earlier position)."""
    score_votes = np.where(current, votes, -1)
    order = np.lexsort((np.arange(votes.size), -magnitude, -score_votes))
    mask = np.zeros_like(current)
    mask[order[:keep]] = True
    return mask


class MPFL(MaskedFedAvg):
    """Server side of MPFL (sampling and evaluation as Flower's FedAvg).

    Phase 1 shrinks the consensus mask C to density ``(1 - prune_rate)^i`` after
    vote round ``i`` until `density` is reached (``ceil(log d / log(1 - p))``
    rounds); phase 2 is masked FedAvg from ``w0 * C`` (``strategies.masked_fedavg``)
    for the remaining rounds.

    Parameters
    ----------
    model, seed, init, mask_coding, input_shape, model_value_format, value_format
        As for :class:`~strategies.masked_fedavg.MaskedFedAvg` (`mask_coding`: how
        the clients' votes go up).
    density : float
        Target fraction of prunable weights kept, in (0, 1].
    prune_rate : float
        Fraction of its kept weights each client prunes per vote round, in (0, 1).
    prune_structure : {"unstructured", "filter"}
        Client pruning by weight magnitude or by output-filter L2 norm.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    STATE = ("iteration",)  # checkpointed (fedmask.server.checkpoint)

    METHOD = "mpfl"

    OWN_WEIGHTS = True

    def __init__(self, *, model: nn.Module, seed: int = 0, init: str = MODEL_INIT,
                 density: float = 0.5, mask_coding: str = "entropy",
                 input_shape: tuple[int, ...] | None = None,
                 model_value_format: str = "float32", value_format: str = "float32",
                 prune_rate: float = 0.2,
                 prune_structure: str = "unstructured", **kwargs: Any) -> None:
        if not 0.0 < prune_rate < 1.0:
            raise ValueError(f"{wire.PRUNE_RATE}: must be in (0, 1), got {prune_rate}")
        if prune_structure not in PRUNE_STRUCTURES:
            raise ValueError(f"{wire.PRUNE_STRUCTURE}: {prune_structure!r} is not one of "
                             f"{list(PRUNE_STRUCTURES)}")
        super().__init__(model=model, seed=seed, init=init, mask_coding=mask_coding,
                         input_shape=input_shape, model_value_format=model_value_format,
                         value_format=value_format, **kwargs)
        self.magnitude = np.abs(flat_weights(model))
        self.target = round(density * self.mask.size)
        self.prune_rate, self.prune_structure, self.iteration = prune_rate, prune_structure, 0
        if self.phase == 2:  # density 1: nothing to search
            self.start_from_mask()

    @property
    def phase(self) -> int:
        """1 while the mask search goes on, 2 once C has reached the target density."""
        return 1 if int(self.mask.sum()) > self.target else 2

    @property
    def kept_fraction(self) -> float:
        """The target density of the consensus mask."""
        return self.target / self.mask.size

    def vote_rounds(self) -> int:
        """Number of phase-1 rounds: ``ceil(log d / log(1 - p))``."""
        return max(0, math.ceil(math.log(self.target / self.mask.size)
                                / math.log(1.0 - self.prune_rate) - 1e-9))

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,
              num_rounds: int = 3, *args: Any, **kwargs: Any) -> Result:
        """Flower's start; ValueError naming `num_rounds` when the run would end
        before masked FedAvg trains (the vote rounds and one more are needed)."""
        needed = self.vote_rounds() + 1
        if self.iteration == 0 and num_rounds < needed:
            raise ValueError(
                f"num_rounds: MPFL votes for {needed - 1} rounds (density "
                f"{self.kept_fraction:.3f}, prune rate {self.prune_rate}) before masked "
                f"FedAvg trains: num_rounds must be at least {needed}, got {num_rounds}")
        return super().start(grid, initial_arrays, num_rounds, *args, **kwargs)

    def summary(self) -> None:
        """Log the set-up, then FedAvg's sampling summary."""
        log(INFO, "\t├──> MPFL: %d weights, target density %.3f after %d vote rounds "
            "(prune rate %.2f, %s), seed %d", self.mask.size, self.target / self.mask.size,
            self.vote_rounds(), self.prune_rate, self.prune_structure, self.net.seed)
        super().summary()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the checkpointed state; the votes' tie-break follows ``w0``."""
        super().load_state_dict(state)
        self.magnitude = np.abs(flat_weights(self.model))

    def wire_config(self) -> dict[str, Any]:
        """The clients' pruning settings."""
        return {wire.PRUNE_RATE: self.prune_rate, wire.PRUNE_STRUCTURE: self.prune_structure}

    def decode_search(self, msg: Message) -> np.ndarray:
        """A client's vote: its mask C_k."""
        return decode_client_mask(msg, self.mask, self.mask_coding)

    def search_step(self, decoded: list[tuple[int, np.ndarray]]) -> None:
        """Keep the most-voted positions of C, down to the next scheduled density."""
        self.iteration += 1
        schedule = round((1.0 - self.prune_rate) ** self.iteration * self.mask.size)
        votes = np.sum([mask for _, mask in decoded], axis=0)
        self.mask = consensus(votes, self.magnitude, self.mask, max(self.target, schedule))
        log(INFO, "MPFL: vote round %d: consensus mask keeps %d of %d weights (density %.3f)",
            self.iteration, int(self.mask.sum()), self.mask.size, self.mask.mean())
        if self.phase == 2:  # the search is over
            log(INFO, "MPFL: the vote is over; masked FedAvg from the next round on")
            self.start_from_mask()
