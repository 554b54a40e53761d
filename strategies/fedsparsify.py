"""FedSparsify server: FedAvg that prunes to a cubic sparsity schedule (global or local)."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from torch import Tensor, nn

from fedmask.methods.fedsparsify import wire as wire
from fedmask.methods.fedsparsify.schedule import check_schedule, scheduled_sparsity
from fedmask.methods.masked.wire import CLIENT_MASK, decode_client_mask, decode_weights
from fedmask.nn.pruning import keep_largest
from fedmask.wire.records import ReplyError
from fedmask.wire.sparse import flat_state, replace_flat
from strategies.base import MODEL_INIT
from strategies.masked_fedavg import MaskedFedAvg, average_states

Update = tuple[int, np.ndarray, np.ndarray]  # n_k, client mask, flat values (0 where pruned)


def majority_merge(updates: list[Update], nnz_only: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Merge the clients' pruned flat weights, one client at a time (memory does
    not grow with their number): keep a position that at least half the clients
    kept; its value is the n_k-weighted mean over all clients (pruned = 0) or,
    with `nnz_only`, over the clients that kept it. Returns (mask, values)."""
    votes = np.zeros(updates[0][1].size, dtype=np.int64)
    total = np.zeros(votes.size, dtype=np.float64)
    weight = np.zeros(votes.size, dtype=np.float64) if nnz_only else 0.0
    for n, mask, values in updates:
        votes += mask
        total += n * values.astype(np.float64)
        weight = weight + n * mask if nnz_only else weight + n
    keep = 2 * votes >= len(updates)
    merged = np.divide(total, weight, out=np.zeros_like(total), where=keep)
    return keep, merged.astype(np.float32)


class FedSparsify(MaskedFedAvg):
    """Server side of FedSparsify (sampling and evaluation as Flower's FedAvg).

    After round ``t`` the global model has the sparsity of the cubic schedule
    (:mod:`fedmask.methods.fedsparsify.schedule`), reaching `final_sparsity` at the
    last round.
    ``global``: the server prunes the n_k-weighted mean by global magnitude.
    ``local``: each client prunes its trained model to the round's sparsity and
    sends its mask; :func:`majority_merge` builds the new global model. Pruned
    weights stay zero; the mask goes down only when it changed.

    Parameters
    ----------
    model, seed, init, mask_coding, input_shape, model_value_format, value_format
        As for :class:`~strategies.masked_fedavg.MaskedFedAvg` (`mask_coding`: how
        the local variant's masks go up), except that ``init`` defaults to
        ``model``: every message carries the weights, so the model's own start.
    num_server_rounds : int, optional
        The run's last round, where `final_sparsity` is reached; None: the
        `num_rounds` that :meth:`start` is given.
    fedsparsify_variant : {"global", "local"}
        Who prunes: the server, or every client before the majority merge.
    final_sparsity : float
        Fraction of prunable weights pruned at `prune_end`, in [0, 1).
    prune_start, prune_every : int
        First pruning round (its sparsity is 0) and the period between pruning rounds.
    nnz_average : bool
        Local variant: average each kept position only over the clients that kept it.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    METHOD = "fedsparsify"
    OWN_WEIGHTS = True

    def __init__(self, *, model: nn.Module, seed: int = 0, init: str = MODEL_INIT,
                 mask_coding: str = "entropy", input_shape: tuple[int, ...] | None = None,
                 model_value_format: str = "float32", value_format: str = "float32",
                 num_server_rounds: int | None = None, fedsparsify_variant: str = "global",
                 final_sparsity: float = 0.9, prune_start: int = 1, prune_every: int = 1,
                 nnz_average: bool = False, **kwargs: Any) -> None:
        if fedsparsify_variant not in wire.VARIANTS:
            raise ValueError(f"{wire.VARIANT}: {fedsparsify_variant!r} is not one of "
                             f"{list(wire.VARIANTS)}")
        super().__init__(model=model, seed=seed, init=init, mask_coding=mask_coding,
                         input_shape=input_shape, model_value_format=model_value_format,
                         value_format=value_format, **kwargs)
        self.variant, self.nnz_average = fedsparsify_variant, nnz_average
        self.pruning = (prune_start, prune_every, final_sparsity)
        check_schedule(prune_start, num_server_rounds or prune_start, prune_every,
                       final_sparsity)
        self.num_server_rounds = num_server_rounds
        self.server_round = 0
        self.start_from_mask()  # dense w0

    @property
    def schedule(self) -> tuple[int, int, int, float]:
        """(prune start, last round, prune every, final sparsity) of the cubic schedule."""
        if self.num_server_rounds is None:
            raise ValueError("num_server_rounds: unknown until start(num_rounds=...) "
                             "or the constructor gives it")
        start, every, final = self.pruning
        return start, self.num_server_rounds, every, final

    @property
    def kept_fraction(self) -> float:
        """The density after the last round."""
        return 1.0 - self.pruning[2]

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,
              num_rounds: int = 3, *args: Any, **kwargs: Any) -> Result:
        """Flower's start; the schedule ends at `num_rounds` unless the constructor
        fixed ``num_server_rounds`` (then the two must agree)."""
        if self.num_server_rounds not in (None, num_rounds):
            raise ValueError(f"num_rounds: {num_rounds} differs from num_server_rounds = "
                             f"{self.num_server_rounds}, where the schedule ends")
        start, every, final = self.pruning
        check_schedule(start, num_rounds, every, final)
        self.num_server_rounds = num_rounds
        return super().start(grid, initial_arrays, num_rounds, *args, **kwargs)

    def summary(self) -> None:
        """Log the set-up, then FedAvg's sampling summary."""
        start, end, every, final = self.schedule
        log(INFO, "\t├──> FedSparsify (%s): %d weights, cubic schedule to sparsity %.2f "
            "from round %d to %d every %d round(s), seed %d", self.variant, self.mask.size,
            final, start, end, every, self.net.seed)
        super().summary()

    def target_kept(self, server_round: int) -> int:
        """Weights kept after `server_round` by the schedule."""
        return round((1.0 - scheduled_sparsity(server_round, *self.schedule)) * self.mask.size)

    def wire_config(self) -> dict[str, Any]:
        """The variant and, for the local variant, this round's weights to keep."""
        config: dict[str, Any] = {wire.VARIANT: self.variant}
        if self.variant == "local":
            config[wire.TARGET_KEPT] = self.target_kept(self.server_round)
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Masked FedAvg's messages, with this round's target."""
        self.server_round = server_round
        return super().configure_train(server_round, arrays, config, grid)

    def decode_update(self, msg: Message) -> Any:
        """Global: the state under the global mask. Local: (client mask, its state)."""
        if self.variant == "global":
            return super().decode_update(msg)
        own = decode_client_mask(msg, self.mask, self.mask_coding)
        expected = min(self.target_kept(self.server_round), int(self.mask.sum()))
        if int(own.sum()) != expected:
            raise ReplyError(CLIENT_MASK, f"keeps {int(own.sum())}, expected {expected}")
        return own, decode_weights(msg, own, self.weights, self.names, self.value_format)

    def update_global(self, server_round: int, decoded: list[tuple[int, Any]]) -> None:
        """Average, then prune (global) or majority-merge the clients' masks (local)."""
        if self.variant == "global":
            super().update_global(server_round, decoded)
            magnitude = np.abs(flat_state(self.weights, self.names))
            mask = keep_largest(magnitude, self.mask, self.target_kept(server_round))
        else:
            mask = self._merge([(n, own, state) for n, (own, state) in decoded])
        if not np.array_equal(mask, self.mask):
            log(INFO, "FedSparsify: round %d keeps %d of %d weights (sparsity %.3f)",
                server_round, int(mask.sum()), mask.size, 1.0 - mask.mean())
        self.set_mask(mask)

    def _merge(self, decoded: list[tuple[int, np.ndarray, dict[str, Tensor]]]) -> np.ndarray:
        """Local variant: the majority mask; weights = merged values + mean dense tensors."""
        updates = [(n, own, flat_state(state, self.names)) for n, own, state in decoded]
        mask, values = majority_merge(updates, self.nnz_average)
        dense = average_states([(n, state) for n, _, state in decoded])
        self.weights = replace_flat(dense, values, self.names)
        return mask
