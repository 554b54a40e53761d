"""Shared server side of the mask-only methods (HideNseek, FedPM).

:class:`SeededMaskStrategy` is a Flower FedAvg (its node sampling, evaluation
aggregation and round loop) whose global model is a seeded frozen network plus
masks. A subclass says what goes down (:meth:`global_arrays`), how a reply is
decoded (:meth:`decode`), each mask's weight in the sum (:meth:`mask_weight`;
the sum is counted sixteen masks at a time, so memory does not grow
with the number of clients: :mod:`fedmask.server.mask_sum`), how the sum is
applied (:meth:`commit`), and which bits the entropy
coder codes (:meth:`coded_bits`), from which every round reports the empirical
entropy of (up to ENTROPY_SAMPLE of) the masks received.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedmask.nn.models import num_prunable
from fedmask.server.mask_sum import MaskSum
from fedmask.server.validation import PREFIX_BYTES, mean_metrics
from fedmask.wire.coding import check_coding
from fedmask.wire.entropy import CodeLength, binary_entropy
from fedmask.wire.held import Context, Downlink
from fedmask.wire.records import CONFIG, MASK_CODING, NUM_PARAMS, num_examples
from strategies.base import MethodStrategy, check_input_shape

ENTROPY_SAMPLE = 8  # masks per round whose entropy is reported (it costs O(N) each)


class SeededMaskStrategy(MethodStrategy, FedAvg):
    """FedAvg whose model is ``seed + masks``; see the module docstring. Replies are
    validated (:mod:`fedmask.server.validation`); the state in STATE is checkpointed.

    Parameters
    ----------
    model : nn.Module
        Architecture shared with the clients; re-initialised in place from `seed`.
    seed, init : int, str
        Seed and init scheme of the frozen weights (see ``fedmask.nn.models``;
        ``auto``: the method's default).
    mask_coding : {"packed", "entropy"}
        How clients code the masks they send (``fedmask.wire.coding``).
    arrayrecord_key : str
        Key of the ArrayRecord carried down.
    input_shape : tuple[int, ...], optional
        Shape of one input example; when given, the model is checked against it.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    LEAN: dict[str, str] = {}  # the global state's array keys and kinds (fedmask.wire.held)
    ORDER_PREFIX = PREFIX_BYTES  # integer sums of masks: no order changes them

    def __init__(self, *, model: nn.Module, seed: int, init: str, mask_coding: str,
                 arrayrecord_key: str, input_shape: tuple[int, ...] | None = None,
                 **kwargs: Any) -> None:
        check_coding(mask_coding)
        super().__init__(arrayrecord_key=arrayrecord_key, **kwargs)
        check_input_shape(model, input_shape)
        self.model, self.mask_coding = model, mask_coding
        self.net = self.announce(model, seed, init)
        self.num_params = num_prunable(model)
        self.downlink = Downlink(self.LEAN, context=self.downlink_context())
        self.code_length: CodeLength | None = None  # the entropy report's model
        self.init_validation(model)

    # --- what a subclass provides -------------------------------------------------
    @abstractmethod
    def global_arrays(self) -> ArrayRecord:
        """The global masks as sent to evaluating clients."""

    def train_arrays(self, server_round: int) -> ArrayRecord:
        """The global masks as sent to training clients (default: global_arrays)."""
        del server_round
        return self.global_arrays()

    def wire_config(self) -> dict[str, Any]:
        """Method-specific keys of the ConfigRecord sent down."""
        return {}

    def on_the_wire(self, arrays: ArrayRecord, config: ConfigRecord
                    ) -> tuple[ArrayRecord, ConfigRecord]:
        """The global state as messages and model files carry it: `arrays` and
        `config` (default: as they are)."""
        return arrays, config

    def downlink_context(self) -> Context | None:
        """The lean downlink's coding context (:mod:`fedmask.wire.held`; default none),
        computed once, from the seeded model."""
        return None

    @abstractmethod
    def decode(self, msg: Message) -> Any:
        """The mask a training reply carries; raise ReplyError/CodecError."""

    @property
    @abstractmethod
    def mask_length(self) -> int:
        """The bits of one client's mask."""

    def decode_stats(self, msg: Message) -> Any:
        """What a training reply carries beside its mask for :meth:`commit_stats`
        (default: nothing); raise ReplyError where it is malformed."""
        del msg
        return None

    def commit_stats(self, server_round: int, stats: list[Any]) -> dict[str, float]:
        """Apply the accepted replies' :meth:`decode_stats`, once the masks are
        committed; return the round's metrics of it (default: none)."""
        del server_round, stats
        return {}

    def after_vote(self, server_round: int, nodes: list[int]) -> dict[str, float]:
        """A step once the round's masks and statistics are committed, given the
        `nodes` whose replies were taken (default: none); return its metrics."""
        del server_round, nodes
        return {}

    def mask_weight(self, num_examples: int) -> int:
        """A client's weight in the sum of masks (default: its examples)."""
        return num_examples

    @abstractmethod
    def commit(self, server_round: int, total: np.ndarray, count: int, examples: int
               ) -> dict[str, float]:
        """Update the global state from `total`, per position the weight of the
        `count` masks (of `examples` examples) that set it; return the round's
        metrics of the update (may be empty)."""

    @abstractmethod
    def coded_bits(self, decoded: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """The bits the entropy coder codes for `decoded`, and its model (None: i.i.d.;
        the same object for every reply of a round)."""

    # --- shared protocol ----------------------------------------------------------
    def initial_arrays(self) -> ArrayRecord:
        """The global masks before round 1."""
        return self.global_arrays()

    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """`arrays` as sent to evaluating clients, with the seeded-net config."""
        return RecordDict({self.arrayrecord_key: arrays, CONFIG: self.config()})

    def config(self, config: ConfigRecord | None = None) -> ConfigRecord:
        """`config` plus the seeded-net description, N, the coding and wire_config()."""
        config = self.with_method(config)
        self.net.to_config(config)
        config[NUM_PARAMS], config[MASK_CODING] = self.num_params, self.mask_coding
        config.update(self.wire_config())
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send train_arrays() with the seeded-net config, each node only what it lacks."""
        arrays, config = self.on_the_wire(self.train_arrays(server_round), self.config(config))
        return self.downlink.lean(super().configure_train(server_round, arrays, config, grid),
                                  self.arrayrecord_key)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send global_arrays() for the clients' local evaluation, each node only
        what it lacks."""
        arrays, config = self.on_the_wire(self.global_arrays(), self.config(config))
        return self.downlink.lean(super().configure_evaluate(server_round, arrays, config, grid),
                                  self.arrayrecord_key)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Note what the nodes now hold, then the mean of their metrics."""
        replies = list(replies)
        self.downlink.acknowledge(replies)
        return super().aggregate_evaluate(server_round, replies)

    def drain_resent_bytes(self) -> int:
        """Bytes of the global state re-sent in full to nodes that lost it."""
        return self.downlink.drain_resent()

    def _decode(self, msg: Message) -> tuple[int, Any, Any]:
        return num_examples(msg), self.decode(msg), self.decode_stats(msg)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the accepted masks; metrics gain the masks' empirical entropy."""
        replies = list(replies)
        self.downlink.acknowledge(replies)
        total, contents, examples, stats = MaskSum(self.mask_length), [], 0, []
        nodes: list[int] = []
        entropy: list[tuple[float, float, float]] = []
        for msg, (n, decoded, side) in self.stream(server_round, replies, self._decode):
            total.add(decoded, self.mask_weight(n))
            contents.append(msg.content)
            nodes.append(msg.metadata.src_node_id)
            stats.append(side)
            examples += n
            if len(entropy) < ENTROPY_SAMPLE:  # against the global state before the update
                entropy.append(self._entropy_bits(decoded))
        if not self.quorum(server_round, len(contents)):
            return None, None
        metrics = mean_metrics(contents, self.weighted_by_key)
        model_bits, iid_bits, ones = np.mean(entropy, axis=0)
        metrics.update({"mask-entropy-bpp": float(model_bits / self.num_params),
                        "mask-iid-entropy-bpp": float(iid_bits / self.num_params),
                        "mask-coded-share": float(ones)})
        metrics.update(self.commit(server_round, total.total(), len(contents), examples))
        metrics.update(self.commit_stats(server_round, stats))
        metrics.update(self.after_vote(server_round, nodes))
        return self.global_arrays(), metrics

    def _entropy_bits(self, decoded: Any) -> tuple[float, float, float]:
        """The coded bits' ideal code length under the coder's model, their i.i.d.
        entropy, in bits, and their share of ones."""
        bits, probs = self.coded_bits(decoded)
        if self.code_length is None or self.code_length.probs is not probs:
            self.code_length = CodeLength(probs)  # once per global state
        ones = float(bits.mean()) if bits.size else 0.0
        return self.code_length(bits), float(binary_entropy(ones) * bits.size), ones
