"""Shared server side of masked FedAvg (MPFL's phase 2, SSFL; see protocol.masked).

:class:`MaskedFedAvg` is Flower's FedAvg over ``w * mask`` with only kept
values on the wire: the mask goes to each node once, and the n_k-weighted mean
of the clients' masked weights keeps pruned positions at exactly zero. A
subclass decides the mask; one with a search phase overrides :attr:`phase`
(1 while searching), :meth:`search_arrays`, :meth:`decode_search` and
:meth:`search_step`; one that changes the mask during training overrides
:meth:`decode_update` and :meth:`update_global` and calls :meth:`set_mask`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import Tensor, nn

from fedmask.methods.masked import wire
from fedmask.nn.models import num_prunable
from fedmask.nn.pruning import apply_flat_mask, prunable_names
from fedmask.server.validation import mean_metrics
from fedmask.wire.coding import check_coding
from fedmask.wire.records import CONFIG, MASK_CODING, NUM_PARAMS, num_examples
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse, encode_sparse, flat_state, replace_flat
from strategies.base import MODEL_INIT, MethodStrategy, check_input_shape


def average_states(decoded: list[tuple[int, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """The n_k-weighted mean ``sum_k (n_k / n) state_k`` of state dicts."""
    total = sum(n for n, _ in decoded)
    return {name: cast(Tensor, sum(state[name] * (n / total) for n, state in decoded))
            for name in decoded[0][1]}


class MaskedFedAvg(MethodStrategy, FedAvg):
    """FedAvg of a seeded net under a mask; see the module docstring. Replies are
    validated (:mod:`fedmask.server.validation`); the mask, the weights and STATE are
    checkpointed.

    Parameters
    ----------
    model : nn.Module
        The global model; its own weights are ``w0`` with ``init="model"``, else it is
        re-initialised in place from `seed`.
    seed, init : int, str
        Seed and init scheme of the initial weights ``w0``: ``model`` (the model's
        own weights, sent down with the mask while there are no global weights yet:
        each vote round, SSFL's query), ``auto`` (Kaiming normal, rebuilt by the
        clients from the seed), or a scheme of :data:`fedmask.nn.models.INITS`.
    mask_coding : {"packed", "entropy"}
        How masks a client sends (if any) are coded.
    input_shape : tuple[int, ...], optional
        Shape of one input example; when given, the model is checked against it.
    model_value_format : {"float32", "float16"}
        Precision of the kept values in the model file (:meth:`save_model`).
    value_format : {"float32", "float16"}
        Precision of the kept values on the wire, both directions (float16 halves
        them; the server averages them as float32).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    def __init__(self, *, model: nn.Module, seed: int, init: str, mask_coding: str = "entropy",
                 input_shape: tuple[int, ...] | None = None,
                 model_value_format: str = "float32", value_format: str = "float32",
                 **kwargs: Any) -> None:
        check_coding(mask_coding)
        for name, value in (("model-value-format", model_value_format),
                            ("value-format", value_format)):
            if value not in wire.VALUE_FORMATS:
                raise ValueError(f"{name}: {value!r} is not one of {list(wire.VALUE_FORMATS)}")
        self.model_value_format, self.value_format = model_value_format, value_format
        super().__init__(arrayrecord_key=wire.WEIGHTS, **kwargs)
        check_input_shape(model, input_shape)
        self.model, self.names = model, prunable_names(model)
        self.net = self.announce(model, seed, init)
        self.sends_start = init == MODEL_INIT  # w0 goes down: clients cannot rebuild it
        self.mask_coding = mask_coding
        self.mask = np.ones(num_prunable(model), dtype=bool)
        self.weights: dict[str, Tensor] = {}
        self.holders: set[int] = set()  # nodes known to hold the current mask
        self.sent: set[int] = set()  # nodes ever sent the current mask
        self.resent_bytes = 0  # mask bytes sent again to nodes that had been sent it
        self.init_validation(model)

    # --- what a subclass with a search phase provides --------------------------------
    @property
    def phase(self) -> int:
        """1 while the mask is searched for, 2 during masked FedAvg."""
        return 2

    def search_arrays(self) -> ArrayRecord:
        """Phase-1 arrays down (default: the current mask)."""
        return ArrayRecord({wire.MASK: wire.mask_array(self.mask)})

    def decode_search(self, msg: Message) -> Any:
        """A phase-1 reply's payload."""
        raise NotImplementedError

    def search_step(self, decoded: list[tuple[int, Any]]) -> None:
        """Update the mask from the phase-1 payloads."""
        raise NotImplementedError

    def wire_config(self) -> dict[str, Any]:
        """Method-specific keys of the config sent down."""
        return {}

    # --- what a subclass that changes the mask during training provides ---------------
    def decode_update(self, msg: Message) -> Any:
        """A phase-2 reply's payload (default: its state dict under the global mask)."""
        return wire.decode_weights(msg, self.mask, self.weights, self.names, self.value_format)

    def update_global(self, server_round: int, decoded: list[tuple[int, Any]]) -> None:
        """Phase 2: new global weights from the payloads (default: n_k-weighted mean)."""
        del server_round
        self.weights = average_states(decoded)

    def set_mask(self, mask: np.ndarray) -> None:
        """Make `mask` the global mask and zero the weights outside it; if it changed,
        every node must be sent it again."""
        if not np.array_equal(mask, self.mask):
            self.holders, self.sent = set(), set()
        self.mask = mask
        flat = flat_state(self.weights, self.names)
        self.weights = replace_flat(self.weights, np.where(mask, flat, np.float32(0.0)),
                                    self.names)

    # --- masked FedAvg -----------------------------------------------------------------
    def masked_start(self) -> dict[str, Tensor]:
        """``w0 * mask`` as a state dict."""
        start = copy.deepcopy(self.model)
        apply_flat_mask(start, self.mask)
        return start.state_dict()

    def start_from_mask(self) -> None:
        """Masked FedAvg starts from ``w0 * mask``; every node must be sent the mask."""
        self.weights, self.holders = self.masked_start(), set()

    def start_arrays(self) -> ArrayRecord:
        """``w0 * mask`` (its kept values) and the mask: the start a node loads when
        it cannot rebuild ``w0`` from the seed (``init="model"``)."""
        record = encode_sparse(self.masked_start(), self.mask, self.names, self.value_format)
        record[wire.MASK] = wire.mask_array(self.mask)
        return record

    def initial_arrays(self) -> ArrayRecord:
        """The global arrays before round 1."""
        return self.global_arrays()

    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """`arrays` (the kept values, or the mask alone before masked FedAvg) with
        the mask, packed, and the config naming it."""
        record = ArrayRecord(dict(arrays))
        record[wire.MASK] = wire.mask_array(self.mask)
        config = self.config()
        if "float16" in (self.model_value_format, self.value_format) and KEPT_VALUES in record:
            record[KEPT_VALUES] = Array(record[KEPT_VALUES].numpy().astype(np.float16))
            config[wire.VALUE_FORMAT] = "float16"
        return RecordDict({wire.WEIGHTS: record, CONFIG: config})

    def global_arrays(self) -> ArrayRecord:
        """Phase 1: search_arrays() (start_arrays() when ``w0`` must go down); phase 2:
        the kept values and dense small tensors."""
        if self.phase == 1:
            return self.start_arrays() if self.sends_start else self.search_arrays()
        return encode_sparse(self.weights, self.mask, self.names, self.value_format)

    def config(self, config: ConfigRecord | None = None) -> ConfigRecord:
        """`config` plus the seeded net, N, the phase, the mask's size and digest."""
        config = self.with_method(config)
        self.net.to_config(config)
        config.update({NUM_PARAMS: self.mask.size, wire.NUM_KEPT: int(self.mask.sum()),
                       wire.PHASE: self.phase, MASK_CODING: self.mask_coding,
                       wire.MASK_DIGEST: wire.mask_digest(self.mask), **self.wire_config()})
        if self.value_format != "float32":
            config[wire.VALUE_FORMAT] = self.value_format
        return config

    def _with_mask(self, messages: Iterable[Message]) -> list[Message]:
        """Phase 2: add the mask to the messages of nodes not known to hold it."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.phase == 1 or node in self.holders:
                out.append(msg)
                continue
            record = ArrayRecord(dict(msg.content.array_records[wire.WEIGHTS]))
            record[wire.MASK] = wire.mask_array(self.mask)
            if node in self.sent:
                self.resent_bytes += len(record[wire.MASK].data)
            self.sent.add(node)
            content = RecordDict({wire.WEIGHTS: record,
                                  CONFIG: msg.content.config_records[CONFIG]})
            out.append(Message(content=content, message_type=msg.metadata.message_type,
                               dst_node_id=node))
        return out

    def drain_resent_bytes(self) -> int:
        """Mask bytes sent again to nodes that lost it, since the last call."""
        out, self.resent_bytes = self.resent_bytes, 0
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send global_arrays() (and the mask to nodes that lack it)."""
        return self._with_mask(super().configure_train(
            server_round, self.global_arrays(), self.config(config), grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the global masked net for local evaluation."""
        return self._with_mask(super().configure_evaluate(
            server_round, self.global_arrays(), self.config(config), grid))

    def _decode(self, msg: Message) -> tuple[int, Any]:
        decode = self.decode_search if self.phase == 1 else self.decode_update
        return num_examples(msg), decode(msg)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Phase 1: search_step(); phase 2: update_global()."""
        replies, phase = list(replies), self.phase
        accepted = self.accepted(server_round, replies, self._decode)
        if phase == 2:
            self.holders -= {m.metadata.src_node_id for m in replies}
            self.holders |= {m.metadata.src_node_id for m, _ in accepted or []}
        if accepted is None:
            return None, None
        decoded = [pair for _, pair in accepted]
        if phase == 1:
            self.search_step(decoded)
        else:
            self.update_global(server_round, decoded)
        metrics = mean_metrics([m.content for m, _ in accepted], self.weighted_by_key)
        metrics.update({"phase": phase, "density": float(self.mask.mean())})
        return self.global_arrays(), metrics

    def state_dict(self) -> dict[str, np.ndarray]:
        """STATE plus the mask, the global weights (``weights/<name>``) and, when it
        is the model's own (``init="model"``), ``w0`` (``start/<name>``)."""
        state = super().state_dict()
        state["mask"] = self.mask
        state.update({f"weights/{k}": v.numpy() for k, v in self.weights.items()})
        if self.sends_start:
            state.update({f"start/{k}": v.numpy() for k, v in self.model.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; every node is sent the mask again."""
        super().load_state_dict(state)
        self.mask = state["mask"].copy()
        self.weights = self._named(state, "weights/")
        if self.sends_start:
            self.model.load_state_dict(self._named(state, "start/"))
        self.holders = set()

    @staticmethod
    def _named(state: dict[str, np.ndarray], prefix: str) -> dict[str, Tensor]:
        """The tensors of `state` whose names start with `prefix`, without it."""
        return {k.removeprefix(prefix): torch.from_numpy(v.copy())
                for k, v in state.items() if k.startswith(prefix)}

    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global net that `arrays` describe (``w0 * mask``, or the masked weights)."""
        model = copy.deepcopy(self.model)
        if KEPT_VALUES in arrays:
            values = wire.with_float32_values(arrays, self.value_format)
            model.load_state_dict(decode_sparse(values, self.mask, model.state_dict(),
                                                self.names))
        else:
            apply_flat_mask(model, wire.decode_mask_record(arrays, self.config()))
        return model
