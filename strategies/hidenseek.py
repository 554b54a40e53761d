"""HideNseek server: one-shot SynFlow pruning, then a weighted majority vote of signs."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from fedmask.methods.hidenseek import wire
from fedmask.nn.class_bias import layer_bias, output_layer, set_output_bias
from fedmask.nn.pruning import PRUNABLE_MODULES, prunable_names, synflow_mask
from fedmask.nn.training import PERSONAL_TUNINGS
from fedmask.server.class_bias import ClassBias
from fedmask.wire.bits import flatten_masks, unpack_mask
from fedmask.wire.class_bias import (
    CLASS_BIAS_LAYER,
    CLASS_BIAS_REPORTS,
    CLASS_BIASES,
    CLASS_STATS,
    ClassStats,
    decode_stats,
    split_offset,
)
from fedmask.wire.held import Context
from fedmask.wire.records import CONFIG, ReplyError
from strategies.base import query_messages
from strategies.seeded_mask import SeededMaskStrategy


def model_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape of one input example as the model tells it: its ``input_shape``
    attribute, else ``(in_features,)`` when its first prunable layer is Linear (and
    not a lazy one, whose width is still unknown); else ValueError asking for
    ``input_shape``."""
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return tuple(int(d) for d in declared)
    first = next((m for m in model.modules() if isinstance(m, PRUNABLE_MODULES)), None)
    if isinstance(first, nn.Linear) and not isinstance(first, nn.LazyLinear):
        return (first.in_features,)
    raise ValueError("input_shape: HideNseek needs the shape of one input example for its "
                     "data-free SynFlow pruning, e.g. input_shape=(1, 28, 28), or from a "
                     "batch: input_shape=tuple(images.shape[1:]); or give the model an "
                     "input_shape attribute")


class HideNseek(SeededMaskStrategy):
    """Server side of HideNseek (sampling and evaluation as Flower's FedAvg).

    Parameters
    ----------
    model : nn.Module
        Architecture shared with the clients; re-initialised in place from `seed`.
    input_shape : tuple[int, ...]
        Shape of one input example (C, H, W), for data-free SynFlow; may be
        omitted when the model has an ``input_shape`` attribute or starts with a
        Linear layer.
    seed, init : int, str
        Seed and init scheme of the frozen weights (see ``fedmask.nn.models``;
        ``auto``: Kaiming normal).
    density : float
        Fraction of prunable weights SynFlow keeps, in (0, 1].
    mask_coding : str
        ``"packed"`` sign bits or ``"entropy"``-coded flips up (``fedmask.wire.coding``).
    synflow_iterations : int
        Pruning iterations T of SynFlow.
    prune_scope : str
        ``"global"`` or ``"layer"`` thresholding.
    personal_epochs : int
        Fine-tuning epochs of the clients' personalised evaluation (0: off).
    personal_tuning : {"weights", "training"}
        What that fine-tuning trains: the global network's weights as floats, by SGD
        at `personal_lr`, or the scores (at the round's optimiser and lr).
    personal_lr : float
        Learning rate of the fine-tuning of the weights.
    vote : {"majority", "share"}
        ``"majority"``: only the global signs g go down (1 bit); ``"share"``: with
        them the vote margin ``|2p - 1|`` (8-bit codes) of the share p voting +1, and
        clients start from the scores ``|w| * (2p - 1)`` instead of ``|w| * g``.
    vote_smoothing : float
        beta in [0, 1): from round 2 the server's share is ``beta * previous + (1 -
        beta) * this round's`` (0: this round's votes alone, the paper's majority
        vote); g is its majority.
    class_bias : {"auto", "federated", "none"}
        ``"federated"``: a per-class logit offset b, learnt by the server from the
        clients' class statistics (:mod:`fedmask.server.class_bias`), lives in the
        output layer's bias (which the model must have); ``"none"``: the paper's
        network, that bias frozen as seeded; ``"auto"``: federated where the
        output layer has a bias, else none (logged).
    class_bias_lr : float
        The server's step size on b.
    class_bias_report : {"train", "voted"}
        Where the clients' class statistics are taken: ``"train"``, in the train
        replies, at the model the round started from (b then fits the signs of one
        vote before); ``"voted"``, after the vote: the nodes whose replies were
        taken get the voted model in a query message and answer with the
        statistics at it (one more exchange a round; their ClientApp must answer
        query messages, :func:`fedmask.client.query_reply`).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    STATE: tuple[str, ...] = ("signs", "share")  # checkpointed, with the offset's when on
    LEAN = {wire.PRUNE_MASK: "bits", wire.SIGN_MASK: "bits"}  # what nodes keep

    METHOD = "hidenseek"

    def __init__(self, *, model: nn.Module, input_shape: tuple[int, ...] | None = None,
                 seed: int = 0, init: str = "auto", density: float = 0.5,
                 mask_coding: str = "entropy", synflow_iterations: int = 100,
                 prune_scope: str = "global", personal_epochs: int = 1,
                 personal_tuning: str = "weights", personal_lr: float = 0.005,
                 vote: str = "majority", vote_smoothing: float = 0.5,
                 class_bias: str = "auto", class_bias_lr: float = 3.0,
                 class_bias_report: str = "train", **kwargs: Any) -> None:
        if personal_tuning not in PERSONAL_TUNINGS:
            raise ValueError(f"personal-tuning: {personal_tuning!r} is not one of "
                             f"{list(PERSONAL_TUNINGS)}")
        if not personal_lr > 0:
            raise ValueError(f"personal-lr: must be > 0, got {personal_lr}")
        if vote not in wire.VOTES:
            raise ValueError(f"vote: {vote!r} is not one of {list(wire.VOTES)}")
        if not 0.0 <= vote_smoothing < 1.0:
            raise ValueError(f"vote-smoothing: must be in [0, 1), got {vote_smoothing}")
        if class_bias not in CLASS_BIASES:
            raise ValueError(f"class-bias: {class_bias!r} is not one of {list(CLASS_BIASES)}")
        if not class_bias_lr > 0:
            raise ValueError(f"class-bias-lr: must be > 0, got {class_bias_lr}")
        if class_bias_report not in CLASS_BIAS_REPORTS:
            raise ValueError(f"class-bias-report: {class_bias_report!r} is not one of "
                             f"{list(CLASS_BIAS_REPORTS)}")
        if class_bias_report == "voted" and class_bias == "none":
            raise ValueError("class-bias-report: 'voted' reports for the offsets, which "
                             "class-bias 'none' turns off")
        shape = input_shape or model_input_shape(model)
        super().__init__(model=model, seed=seed, init=init, mask_coding=mask_coding,
                         arrayrecord_key=wire.MASKS, input_shape=shape, **kwargs)
        masks = synflow_mask(model, density, shape, synflow_iterations, prune_scope)
        self.prune = flatten_masks(masks, prunable_names(model))
        self.signs = np.ones(int(self.prune.sum()), dtype=bool)
        self.share = np.ones(self.signs.size)  # smoothed share voting +1 (all, before round 1)
        self.vote, self.vote_smoothing = vote, vote_smoothing
        self.synflow_iterations, self.personal_epochs = synflow_iterations, personal_epochs
        self.personal_tuning, self.personal_lr = personal_tuning, personal_lr
        self.offset_layer, self.offset = self._offset_layer(model, shape, class_bias), None
        if self.offset_layer:
            self.offset = ClassBias(layer_bias(model, self.offset_layer).numel(),
                                    class_bias_lr)
            self.STATE = (*type(self).STATE, "offset.bias", "offset.reports", "offset.reported")
            self.reply_records = frozenset({CLASS_STATS})
        self.class_bias_report = class_bias_report
        self.unreported = 0  # replies without class statistics so far
        self.grid: Grid | None = None  # the round's, for the class report on the voted model

    @staticmethod
    def _offset_layer(model: nn.Module, shape: tuple[int, ...], class_bias: str) -> str:
        """The output layer that keeps the per-class offsets ("" when off): with
        ``"auto"``, off (logged) where the model's output layer has no bias."""
        if class_bias == "none":
            return ""
        try:
            return output_layer(model, shape)
        except ValueError as err:
            if class_bias == "federated":
                raise
            log(WARNING, "class-bias 'auto': no per-class offsets (%s)", err)
            return ""

    def summary(self) -> None:
        """Log the pruning result, then FedAvg's sampling summary."""
        log(INFO, "\t├──> HideNseek: SynFlow (%d iterations) kept %d of %d weights "
            "(density %.3f), seed %d, hash %s, mask coding %s", self.synflow_iterations,
            self.signs.size, self.prune.size, self.signs.size / self.prune.size,
            self.net.seed, self.net.weight_hash, self.mask_coding)
        if self.offset is not None:
            log(INFO, "\t├──> class-bias: federated per-class offsets of %d classes in %s's "
                "bias, step %g, statistics taken at the %s model", self.offset.num_classes,
                self.offset_layer, self.offset.lr,
                "voted" if self.reports_voted else "round's starting")
        super().summary()

    def global_arrays(self) -> ArrayRecord:
        """The global state: P, the current global signs (all +1 before round 1) and
        the per-class offsets when `class_bias` is on."""
        return wire.encode_masks(self.prune, self.signs, class_bias=self._bias())

    def _bias(self) -> np.ndarray | None:
        return None if self.offset is None else self.offset.bias

    @property
    def reports_voted(self) -> bool:
        """Whether the offsets step on statistics at the voted model (``"voted"``)."""
        return self.offset is not None and self.class_bias_report == "voted"

    def train_arrays(self, server_round: int) -> ArrayRecord:
        """P, and from round 2 the global signs (absent means all +1), when `vote`
        is ``"share"`` their vote margins, and the per-class offsets where the train
        replies report on them."""
        if server_round == 1:
            return wire.encode_masks(self.prune, None)
        margin = wire.margin_codes(self.share) if self.vote == "share" else None
        bias = None if self.reports_voted else self._bias()
        return wire.encode_masks(self.prune, self.signs, margin=margin, class_bias=bias)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The seeded-mask train messages; the grid is kept for the class report."""
        self.grid = grid
        return super().configure_train(server_round, arrays, config, grid)

    def downlink_context(self) -> Context:
        """P and g coded within each seeded weight's output unit and |w| quantile."""
        return wire.downlink_context(self.model)

    def wire_config(self) -> dict[str, Any]:
        """The number of kept weights K, and the output layer the offsets live in."""
        if self.offset is None:
            return {wire.NUM_KEPT: self.signs.size}
        return {wire.NUM_KEPT: self.signs.size, CLASS_BIAS_LAYER: self.offset_layer}

    def decode(self, msg: Message) -> np.ndarray:
        """The client's K sign bits, packed."""
        return wire.decode_signs(msg, self.signs, self.mask_coding)

    def decode_stats(self, msg: Message) -> ClassStats | None:
        """The reply's class statistics, when the offset is on."""
        return None if self.offset is None else decode_stats(msg, self.offset.num_classes)

    def commit_stats(self, server_round: int, stats: list[Any]) -> dict[str, float]:
        """Step the offsets on the class statistics of the accepted replies (replies
        without them are logged the first time: their loop did not report)."""
        if self.offset is None or server_round == 1 or self.reports_voted:
            return {}  # round 1 trains from no vote; "voted" reports after it
        given = [one for one in stats if one is not None]
        if len(given) < len(stats) and not self.unreported:
            log(WARNING, "round %d: %d replies carry no class statistics for class-bias "
                "(call fedmask.client.report_classes before training); the offsets learn "
                "from the others", server_round, len(stats) - len(given))
        self.unreported += len(stats) - len(given)
        return {**self.offset.update(given), "class-stats-replies": len(given)}

    def after_vote(self, server_round: int, nodes: list[int]) -> dict[str, float]:
        """With ``class-bias-report = "voted"``: the `nodes` report on the voted model
        (:meth:`report_voted`), then the offsets step on their statistics."""
        if not self.reports_voted:
            return {}
        stats = self.report_voted(server_round, nodes)
        if not stats:
            log(WARNING, "round %d: no node answered the class report on the voted model "
                "(a ClientApp answers query messages with fedmask.client.query_reply); "
                "the offsets stay", server_round)
        assert self.offset is not None
        return {**self.offset.update(stats), "class-stats-replies": len(stats)}

    def report_voted(self, server_round: int, nodes: list[int]) -> list[ClassStats]:
        """Send the voted model to `nodes` in a query message, each only what it
        lacks; the class statistics of the valid answers."""
        if self.grid is None:
            raise RuntimeError("class-bias-report 'voted': no grid to send the report on "
                               "(configure_train was not called)")
        arrays, config = self.on_the_wire(self.global_arrays(), self.config(ConfigRecord()))
        messages = query_messages(RecordDict({self.arrayrecord_key: arrays, CONFIG: config}),
                                  nodes)
        replies = list(self.grid.send_and_receive(
            self.downlink.lean(messages, self.arrayrecord_key), timeout=self.round_timeout))
        self.downlink.acknowledge(replies)
        return [stats for _, stats in self.stream(server_round, replies, self._report_of)]

    def _report_of(self, msg: Message) -> ClassStats:
        stats = self.decode_stats(msg)
        if stats is None:
            raise ReplyError(CLASS_STATS, "missing from the answer to the class report")
        return stats

    def coded_bits(self, decoded: np.ndarray) -> tuple[np.ndarray, None]:
        """The flips relative to the global signs, coded as i.i.d. bits."""
        return unpack_mask(decoded, self.signs.size) != self.signs, None

    @property
    def mask_length(self) -> int:
        """K sign bits; each client's vote weighs its examples: per position, the
        sum is the examples voting +1."""
        return self.signs.size

    def commit(self, server_round: int, total: np.ndarray, count: int, examples: int
               ) -> dict[str, float]:
        """The share voting +1, weighted by examples (smoothed across rounds by
        `vote_smoothing` from round 2 on: round 1's votes stand alone, as nothing was
        voted before), and its majority ``g``; ties keep g. Metrics: the share
        of global signs that flipped, and the mean vote margin ``|2p - 1|``."""
        del count
        beta = self.vote_smoothing if server_round > 1 else 0.0
        share = total / examples
        share *= 1 - beta
        if beta:  # in place: the same sum as beta * share + (1 - beta) * this round's
            share += beta * self.share
        self.share = share
        signs = np.where(self.share == 0.5, self.signs, self.share > 0.5)
        flipped = float(np.mean(signs != self.signs))
        self.signs = signs
        return {"sign-flip-share": flipped,
                "vote-margin": float(np.abs(2 * self.share - 1).mean())}

    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """P and g of `arrays`, each range coded where that is smaller than packed, and
        the per-class offsets in the config."""
        prune, signs = wire.decode_masks(arrays, self.config())
        masks = wire.encode_masks(prune, signs, compact=True,
                                  class_bias=wire.decode_class_bias(arrays))
        masks, config = self.on_the_wire(masks, self.config())
        return RecordDict({wire.MASKS: masks, CONFIG: config})

    def on_the_wire(self, arrays: ArrayRecord, config: ConfigRecord
                    ) -> tuple[ArrayRecord, ConfigRecord]:
        """The per-class offsets move from the state's record into the config (ten
        floats cost about 100 bytes there, as an Array about 600)."""
        return split_offset(arrays, config)

    @property
    def kept_fraction(self) -> float:
        """The density SynFlow reached."""
        return self.signs.size / self.prune.size

    def method_config(self) -> dict[str, Any]:
        """How the clients fine-tune for their personalised evaluation."""
        return {"personal-epochs": self.personal_epochs, "personal-tuning": self.personal_tuning,
                "personal-lr": self.personal_lr}

    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network ``w * P * g`` that `arrays` describe, with their per-class
        offsets in the output layer's bias, for evaluation."""
        prune, signs = wire.decode_masks(arrays, self.config(ConfigRecord()))
        net = wire.sign_net(copy.deepcopy(self.model), prune, signs)
        return set_output_bias(net, self.offset_layer, wire.decode_class_bias(arrays))
