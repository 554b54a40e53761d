"""HideNseek server: one-shot SynFlow pruning, then a weighted majority vote of signs."""

from __future__ import annotations

import copy

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch import nn

from fedmask.codec import flatten_masks
from fedmask.protocol import accept, num_examples
from fedmask.protocol import hidenseek as wire
from fedmask.pruning import prunable_names, synflow_mask
from fedmask.seeded import SeededNet


class HideNseek(FedAvg):
    """Server side of HideNseek (sampling and evaluation as Flower's FedAvg).

    Parameters
    ----------
    model : nn.Module
        Architecture shared with the clients; re-initialised in place from `seed`.
    input_shape : tuple[int, ...]
        Shape of one input example (C, H, W), for data-free SynFlow.
    seed, init : int, str
        Seed and init scheme of the frozen weights (see ``fedmask.models``).
    density : float
        Fraction of prunable weights SynFlow keeps, in (0, 1].
    synflow_iterations : int
        Pruning iterations T of SynFlow.
    prune_scope : str
        ``"global"`` or ``"layer"`` thresholding.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], seed: int = 0,
                 init: str = "kaiming-normal", density: float = 0.5,
                 synflow_iterations: int = 100, prune_scope: str = "global",
                 **kwargs) -> None:  # noqa: ANN003
        super().__init__(arrayrecord_key=wire.MASKS, **kwargs)
        self.model = model
        self.net = SeededNet.announce(model, seed, init)
        masks = synflow_mask(model, density, input_shape, synflow_iterations, prune_scope)
        self.prune = flatten_masks(masks, prunable_names(model))
        self.signs = np.ones(int(self.prune.sum()), dtype=bool)
        self.density, self.synflow_iterations = density, synflow_iterations

    def summary(self) -> None:
        """Log the pruning result, then FedAvg's sampling summary."""
        log(INFO, "\t├──> HideNseek: SynFlow (%d iterations) kept %d of %d weights "
            "(density %.3f), seed %d, hash %s", self.synflow_iterations, self.signs.size,
            self.prune.size, self.signs.size / self.prune.size, self.net.seed,
            self.net.weight_hash)
        super().summary()

    def global_arrays(self) -> ArrayRecord:
        """The global state: P and the current global signs (all +1 before round 1)."""
        return wire.encode_masks(self.prune, self.signs)

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        config = ConfigRecord(dict(config))
        self.net.to_config(config)
        config[wire.NUM_PARAMS], config[wire.NUM_KEPT] = self.prune.size, self.signs.size
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send P (and, from round 2, the global signs) with the seeded-net config."""
        down = wire.encode_masks(self.prune, self.signs if server_round > 1 else None)
        return super().configure_train(server_round, down, self._config(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send P and the global signs for local and personalised evaluation."""
        return super().configure_evaluate(server_round, self.global_arrays(),
                                          self._config(config), grid)

    def _decode(self, msg: Message) -> tuple[int, np.ndarray]:
        return num_examples(msg), wire.decode_signs(msg, self.signs.size)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted majority vote ``g = sign(sum_k n_k sign_k)``; ties keep g."""
        accepted = accept(replies, self._decode)
        if not accepted:
            return None, None
        votes = np.zeros(self.signs.size, dtype=np.int64)
        for _, (weight, bits) in accepted:
            votes += np.where(bits, weight, -weight)
        self.signs = np.where(votes == 0, self.signs, votes > 0)
        metrics = aggregate_metricrecords([m.content for m, _ in accepted], self.weighted_by_key)
        return self.global_arrays(), metrics

    def global_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network ``w * P * g`` that `arrays` describe, for evaluation."""
        prune, signs = wire.decode_masks(arrays, self._config(ConfigRecord()))
        return wire.sign_net(copy.deepcopy(self.model), prune, signs)
