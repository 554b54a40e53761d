"""MPFL server: a consensus pruning mask from client votes, then masked FedAvg."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch import nn

from fedmask.codec import pack_mask
from fedmask.mask_coding import CODINGS
from fedmask.protocol import MASK_CODING, NUM_PARAMS, ReplyError, accept, num_examples
from fedmask.protocol import mpfl as wire
from fedmask.pruning import PRUNE_STRUCTURES, apply_flat_mask, flat_weights, prunable_names
from fedmask.seeded import SeededNet
from fedmask.sparse import KEPT_VALUES, decode_sparse, encode_sparse


def consensus(votes: np.ndarray, magnitude: np.ndarray, current: np.ndarray,
              keep: int) -> np.ndarray:
    """The `keep` positions of `current` with most votes, ties to larger `magnitude`
    (then to the earlier position)."""
    score_votes = np.where(current, votes, -1)
    order = np.lexsort((np.arange(votes.size), -magnitude, -score_votes))
    mask = np.zeros_like(current)
    mask[order[:keep]] = True
    return mask


class MPFL(FedAvg):
    """Server side of MPFL (sampling and evaluation as Flower's FedAvg).

    Phase 1 shrinks the consensus mask C to density ``(1 - prune_rate)^i`` after
    vote round ``i`` until `density` is reached (``ceil(log d / log(1 - p))``
    rounds); phase 2 is FedAvg of ``w * C`` from ``w0 * C`` with only kept values
    on the wire, for the remaining rounds.

    Parameters
    ----------
    model : nn.Module
        Architecture shared with the clients; re-initialised in place from `seed`.
    seed, init : int, str
        Seed and init scheme of the initial weights ``w0``.
    density : float
        Target fraction of prunable weights kept, in (0, 1].
    prune_rate : float
        Fraction of its kept weights each client prunes per vote round, in (0, 1).
    prune_structure : {"unstructured", "filter"}
        Client pruning by weight magnitude or by output-filter L2 norm.
    mask_coding : {"packed", "entropy"}
        How the clients' masks go up.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    def __init__(self, model: nn.Module, seed: int = 0, init: str = "kaiming-normal",
                 density: float = 0.2, prune_rate: float = 0.2,
                 prune_structure: str = "unstructured", mask_coding: str = "packed",
                 **kwargs: Any) -> None:
        if not 0.0 < prune_rate < 1.0:
            raise ValueError(f"{wire.PRUNE_RATE}: must be in (0, 1), got {prune_rate}")
        if prune_structure not in PRUNE_STRUCTURES:
            raise ValueError(f"{wire.PRUNE_STRUCTURE}: {prune_structure!r} is not one of "
                             f"{list(PRUNE_STRUCTURES)}")
        if mask_coding not in CODINGS:
            raise ValueError(f"{MASK_CODING}: {mask_coding!r} is not one of {list(CODINGS)}")
        super().__init__(arrayrecord_key=wire.WEIGHTS, **kwargs)
        self.model, self.names = model, prunable_names(model)
        self.net = SeededNet.announce(model, seed, init)
        self.magnitude = np.abs(flat_weights(model))
        self.mask = np.ones(self.magnitude.size, dtype=bool)
        self.target = round(density * self.mask.size)
        self.prune_rate, self.prune_structure = prune_rate, prune_structure
        self.mask_coding, self.iteration = mask_coding, 0
        self.weights: dict[str, Any] = {}
        self.holders: set[int] = set()  # nodes known to hold the final C

    @property
    def phase(self) -> int:
        """1 while the mask search goes on, 2 once C has reached the target density."""
        return 1 if int(self.mask.sum()) > self.target else 2

    def vote_rounds(self) -> int:
        """Number of phase-1 rounds: ``ceil(log d / log(1 - p))``."""
        return max(0, math.ceil(math.log(self.target / self.mask.size)
                                / math.log(1.0 - self.prune_rate) - 1e-9))

    def summary(self) -> None:
        """Log the set-up, then FedAvg's sampling summary."""
        log(INFO, "\t├──> MPFL: %d weights, target density %.3f after %d vote rounds "
            "(prune rate %.2f, %s), seed %d", self.mask.size, self.target / self.mask.size,
            self.vote_rounds(), self.prune_rate, self.prune_structure, self.net.seed)
        super().summary()

    def global_arrays(self) -> ArrayRecord:
        """Phase 1: C packed; phase 2: the kept values and dense small tensors."""
        if self.phase == 1:
            return wire.encode_consensus(self.mask)
        return encode_sparse(self.weights, self.mask, self.names)

    def config(self, config: ConfigRecord | None = None) -> ConfigRecord:
        """`config` plus the seeded net, N, the phase and the mask-search settings."""
        config = ConfigRecord(dict(config or {}))
        self.net.to_config(config)
        config.update({NUM_PARAMS: self.mask.size, wire.NUM_KEPT: int(self.mask.sum()),
                       wire.PHASE: self.phase, wire.PRUNE_RATE: self.prune_rate,
                       wire.PRUNE_STRUCTURE: self.prune_structure,
                       MASK_CODING: self.mask_coding,
                       wire.MASK_DIGEST: wire.mask_digest(self.mask)})
        return config

    def _with_mask(self, messages: Iterable[Message]) -> list[Message]:
        """Phase 2: add C to the messages of nodes not known to hold it."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.phase == 1 or node in self.holders:
                out.append(msg)
                continue
            record = ArrayRecord(dict(msg.content.array_records[wire.WEIGHTS]))
            record[wire.CONSENSUS] = Array(pack_mask(self.mask))
            content = RecordDict({wire.WEIGHTS: record,
                                  "config": msg.content.config_records["config"]})
            out.append(Message(content=content, message_type=msg.metadata.message_type,
                               dst_node_id=node))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send C (phase 1) or the sparse weights (phase 2)."""
        return self._with_mask(super().configure_train(
            server_round, self.global_arrays(), self.config(config), grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the global masked net for local evaluation."""
        return self._with_mask(super().configure_evaluate(
            server_round, self.global_arrays(), self.config(config), grid))

    def _decode(self, msg: Message) -> tuple[int, Any]:
        if self.phase == 1:
            return num_examples(msg), wire.decode_vote(msg, self.mask, self.mask_coding)
        if wire.WEIGHTS not in msg.content.array_records:
            raise ReplyError(wire.WEIGHTS, "missing ArrayRecord")
        record = msg.content.array_records[wire.WEIGHTS]
        return num_examples(msg), decode_sparse(record, self.mask, self.weights, self.names)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Phase 1: vote the next C; phase 2: n_k-weighted mean of the masked weights."""
        replies = list(replies)
        accepted = accept(replies, self._decode)
        phase = self.phase
        if phase == 2:
            self.holders -= {m.metadata.src_node_id for m in replies}
            self.holders |= {m.metadata.src_node_id for m, _ in accepted}
        if not accepted:
            return None, None
        decoded = [pair for _, pair in accepted]
        if phase == 1:
            self._vote([mask for _, mask in decoded])
        else:
            self._average(decoded)
        metrics = aggregate_metricrecords([m.content for m, _ in accepted], self.weighted_by_key)
        metrics.update({"phase": phase, "density": float(self.mask.mean())})
        return self.global_arrays(), metrics

    def _vote(self, masks: list[np.ndarray]) -> None:
        self.iteration += 1
        schedule = round((1.0 - self.prune_rate) ** self.iteration * self.mask.size)
        keep = max(self.target, schedule)
        votes = np.sum(masks, axis=0)
        self.mask = consensus(votes, self.magnitude, self.mask, keep)
        if self.phase == 2:  # the search is over: FedAvg starts from w0 * C
            start = copy.deepcopy(self.model)
            apply_flat_mask(start, self.mask)
            self.weights = start.state_dict()

    def _average(self, decoded: list[tuple[int, dict[str, Any]]]) -> None:
        total = sum(n for n, _ in decoded)
        self.weights = {name: sum(state[name] * (n / total) for n, state in decoded)
                        for name in self.weights}

    def global_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global net that `arrays` describe (``w0 * C``, or the masked weights)."""
        model = copy.deepcopy(self.model)
        if KEPT_VALUES in arrays:
            model.load_state_dict(decode_sparse(arrays, self.mask, model.state_dict(),
                                                self.names))
        else:
            apply_flat_mask(model, wire.decode_consensus(arrays, self.config()))
        return model
