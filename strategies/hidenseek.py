"""HideNseek server: one-shot SynFlow pruning, then a weighted majority vote of signs."""

from __future__ import annotations

import copy
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from torch import nn

from fedmask.methods.hidenseek import wire
from fedmask.nn.pruning import PRUNABLE_MODULES, prunable_names, synflow_mask
from fedmask.nn.training import PERSONAL_TUNINGS
from fedmask.wire.bits import flatten_masks, unpack_mask
from fedmask.wire.held import Context
from fedmask.wire.records import CONFIG
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
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    STATE = ("signs", "share")  # checkpointed (fedmask.server.checkpoint)
    LEAN = {wire.PRUNE_MASK: "bits", wire.SIGN_MASK: "bits"}  # what nodes keep

    METHOD = "hidenseek"

    def __init__(self, *, model: nn.Module, input_shape: tuple[int, ...] | None = None,
                 seed: int = 0, init: str = "auto", density: float = 0.5,
                 mask_coding: str = "entropy", synflow_iterations: int = 100,
                 prune_scope: str = "global", personal_epochs: int = 1,
                 personal_tuning: str = "weights", personal_lr: float = 0.005,
                 vote: str = "majority", vote_smoothing: float = 0.5,
                 **kwargs: Any) -> None:
        if personal_tuning not in PERSONAL_TUNINGS:
            raise ValueError(f"personal-tuning: {personal_tuning!r} is not one of "
                             f"{list(PERSONAL_TUNINGS)}")
        if not personal_lr > 0:
            raise ValueError(f"personal-lr: must be > 0, got {personal_lr}")
        if vote not in wire.VOTES:
            raise ValueError(f"vote: {vote!r} is not one of {list(wire.VOTES)}")
        if not 0.0 <= vote_smoothing < 1.0:
            raise ValueError(f"vote-smoothing: must be in [0, 1), got {vote_smoothing}")
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

    def summary(self) -> None:
        """Log the pruning result, then FedAvg's sampling summary."""
        log(INFO, "\t├──> HideNseek: SynFlow (%d iterations) kept %d of %d weights "
            "(density %.3f), seed %d, hash %s, mask coding %s", self.synflow_iterations,
            self.signs.size, self.prune.size, self.signs.size / self.prune.size,
            self.net.seed, self.net.weight_hash, self.mask_coding)
        super().summary()

    def global_arrays(self) -> ArrayRecord:
        """The global state: P and the current global signs (all +1 before round 1)."""
        return wire.encode_masks(self.prune, self.signs)

    def train_arrays(self, server_round: int) -> ArrayRecord:
        """P, and from round 2 the global signs (absent means all +1) and, when `vote`
        is ``"share"``, their vote margins."""
        if server_round == 1:
            return wire.encode_masks(self.prune, None)
        margin = wire.margin_codes(self.share) if self.vote == "share" else None
        return wire.encode_masks(self.prune, self.signs, margin=margin)

    def downlink_context(self) -> Context:
        """P and g coded within each seeded weight's output unit and |w| quantile."""
        return wire.downlink_context(self.model)

    def wire_config(self) -> dict[str, Any]:
        """The number of kept weights K."""
        return {wire.NUM_KEPT: self.signs.size}

    def decode(self, msg: Message) -> np.ndarray:
        """The client's K sign bits, packed."""
        return wire.decode_signs(msg, self.signs, self.mask_coding)

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
        """P and g of `arrays`, each range coded where that is smaller than packed."""
        prune, signs = wire.decode_masks(arrays, self.config())
        return RecordDict({wire.MASKS: wire.encode_masks(prune, signs, compact=True),
                           CONFIG: self.config()})

    @property
    def kept_fraction(self) -> float:
        """The density SynFlow reached."""
        return self.signs.size / self.prune.size

    def method_config(self) -> dict[str, Any]:
        """How the clients fine-tune for their personalised evaluation."""
        return {"personal-epochs": self.personal_epochs, "personal-tuning": self.personal_tuning,
                "personal-lr": self.personal_lr}

    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network ``w * P * g`` that `arrays` describe, for evaluation."""
        prune, signs = wire.decode_masks(arrays, self.config(ConfigRecord()))
        return wire.sign_net(copy.deepcopy(self.model), prune, signs)
