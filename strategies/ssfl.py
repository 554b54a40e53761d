"""SSFL server: one global mask from all clients' SNIP saliency, then masked FedAvg."""

from __future__ import annotations

from logging import INFO
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from fedmask.methods.masked import wire as masked_wire
from fedmask.methods.ssfl import wire as wire
from fedmask.nn.pruning import keep_largest
from fedmask.wire.records import CONFIG, num_examples
from strategies.base import MODEL_INIT, query_messages
from strategies.masked_fedavg import MaskedFedAvg


def aggregate_saliency(saliencies: list[tuple[int, np.ndarray]], weighted: bool) -> np.ndarray:
    """``sum_k (n_k / n) s_k`` (or the plain mean when not `weighted`)."""
    total = sum(n for n, _ in saliencies)
    return cast(np.ndarray, sum((n / total if weighted else 1 / len(saliencies)) * s
                                for n, s in saliencies))


class SSFL(MaskedFedAvg):
    """Server side of SSFL (sampling and evaluation as Flower's FedAvg).

    Before round 1, :meth:`prepare` (run by :meth:`start`) asks every connected
    node for SNIP saliency (a ``query`` message), aggregates it and keeps the
    global top ``d*N`` positions; every round is then masked FedAvg
    (``strategies.masked_fedavg``).

    Parameters
    ----------
    model, seed, init, input_shape, model_value_format, value_format
        As for :class:`~strategies.masked_fedavg.MaskedFedAvg`.
    density : float
        Fraction of prunable weights kept, in (0, 1].
    saliency_batches : int
        Local batches each client's SNIP gradient is summed over.
    saliency_format : {"float16", "float32"}
        Precision of the saliency sent up.
    saliency_weighted : bool
        Weight each client's saliency by its examples (else the plain mean).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    METHOD = "ssfl"

    OWN_WEIGHTS = True

    def __init__(self, *, model: nn.Module, seed: int = 0, init: str = MODEL_INIT,
                 density: float = 0.5, input_shape: tuple[int, ...] | None = None,
                 model_value_format: str = "float32", value_format: str = "float32",
                 saliency_batches: int = 1, saliency_format: str = "float16",
                 saliency_weighted: bool = True, **kwargs: Any) -> None:
        if saliency_format not in wire.SALIENCY_DTYPES:
            raise ValueError(f"{wire.SALIENCY_FORMAT}: {saliency_format!r} is not one of "
                             f"{list(wire.SALIENCY_DTYPES)}")
        if saliency_batches < 1:
            raise ValueError(f"{wire.SALIENCY_BATCHES}: must be >= 1, got {saliency_batches}")
        super().__init__(model=model, seed=seed, init=init, input_shape=input_shape,
                         model_value_format=model_value_format,
                         value_format=value_format, **kwargs)
        self.keep = round(density * self.mask.size)
        self.saliency_batches, self.saliency_format = saliency_batches, saliency_format
        self.saliency_weighted = saliency_weighted
        self.start_from_mask()  # all weights, until find_mask()

    def summary(self) -> None:
        """Log the set-up, then FedAvg's sampling summary."""
        log(INFO, "\t├──> SSFL: %d weights, density %.3f from SNIP on %d batch(es), "
            "saliency up as %s, %s mean, seed %d", self.mask.size, self.keep / self.mask.size,
            self.saliency_batches, self.saliency_format,
            "n_k-weighted" if self.saliency_weighted else "plain", self.net.seed)
        super().summary()

    def find_mask(self, grid: Grid, timeout: float) -> None:
        """Ask every connected node for saliency; keep the global top ``d*N``."""
        config = self.config(ConfigRecord({wire.SALIENCY_BATCHES: self.saliency_batches,
                                           wire.SALIENCY_FORMAT: self.saliency_format}))
        start = {masked_wire.WEIGHTS: self.start_arrays()} if self.sends_start else {}
        nodes = list(grid.get_node_ids())
        messages = query_messages(RecordDict({CONFIG: config, **start}), nodes)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        accepted = self.accepted(0, replies, self._decode_saliency)
        if accepted is None:
            raise RuntimeError("SSFL: too few nodes returned a valid saliency to build the mask")
        saliencies = [pair for _, pair in accepted]
        scores = aggregate_saliency(saliencies, self.saliency_weighted)
        self.mask = keep_largest(scores, np.ones(scores.size, dtype=bool), self.keep)
        self.start_from_mask()
        log(INFO, "SSFL: mask from the saliency of %d of %d nodes keeps %d of %d weights",
            len(saliencies), len(nodes), self.keep, self.mask.size)

    @property
    def kept_fraction(self) -> float:
        """The density of the saliency mask."""
        return self.keep / self.mask.size

    def prepare(self, grid: Grid, timeout: float, initial_arrays: ArrayRecord | None
                ) -> ArrayRecord:
        """The step before round 1: find_mask(); round 1 starts from ``w0 * mask``
        (`initial_arrays`, which cannot hold the mask yet, is not used)."""
        del initial_arrays
        self.find_mask(grid, timeout)
        return self.global_arrays()

    def _decode_saliency(self, msg: Message) -> tuple[int, np.ndarray]:
        return num_examples(msg), wire.decode_saliency(msg, self.mask.size, self.saliency_format)
