"""Dense FedAvg, the reference: Flower's FedAvg with every reply validated first."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fedmask.server.validation import mean_metrics
from fedmask.wire.records import CONFIG, METRICS, NUM_EXAMPLES, ReplyError, num_examples
from strategies.base import MODEL_INIT, MethodStrategy, check_input_shape


class FedAvg(MethodStrategy, FlowerFedAvg):
    """Flower's FedAvg, except that a reply whose ArrayRecord does not match the
    global model (keys, dtypes, shapes, finite values) or fails
    :mod:`fedmask.server.validation` is dropped instead of stopping the round (Flower's
    ``validate_message_reply_consistency`` raises on the whole round).

    Parameters
    ----------
    model : nn.Module
        The global model; its own weights are the initial arrays (``init="model"``),
        else it is re-initialised in place from `seed`.
    seed, init : int, str
        Seed and init scheme of the initial weights: ``model`` (the default: the
        model's own), ``auto`` (Kaiming normal, what fedmask's app uses) or a scheme
        of ``fedmask.nn.models.INITS``. The seed also names the architecture.
    input_shape : tuple[int, ...], optional
        Shape of one input example; when given, the model is checked against it.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    METHOD = "fedavg"
    OWN_WEIGHTS = True

    def __init__(self, *, model: nn.Module, seed: int = 0, init: str = MODEL_INIT,
                 input_shape: tuple[int, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_input_shape(model, input_shape)
        self.model = model
        self.net = self.announce(model, seed, init)
        self.init_validation(model)
        self.reference = ArrayRecord(model.state_dict())

    def initial_arrays(self) -> ArrayRecord:
        """The model's state dict (its own weights, or the seeded ones)."""
        return ArrayRecord(self.model.state_dict())

    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """The float32 weights, and the seed that names the architecture (its hash)."""
        config = self.with_method(ConfigRecord())
        self.net.to_config(config)
        return RecordDict({self.arrayrecord_key: arrays, CONFIG: config})

    @property
    def kept_fraction(self) -> float:
        """Dense: every weight."""
        return 1.0

    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The model with the weights `arrays` carry."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(arrays.to_torch_state_dict())
        return model

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's, remembering `arrays` as the shape of a valid reply."""
        self.reference = arrays
        return super().configure_train(server_round, arrays, self.with_method(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Flower's, with the method named for the client API."""
        return super().configure_evaluate(server_round, arrays, self.with_method(config), grid)

    def _decode(self, msg: Message) -> ArrayRecord:
        records = msg.content.array_records
        if list(records) != [self.arrayrecord_key]:
            raise ReplyError(self.arrayrecord_key, f"expected one ArrayRecord "
                             f"{self.arrayrecord_key!r}, got {list(records)}")
        record = records[self.arrayrecord_key]
        if list(record) != list(self.reference):
            raise ReplyError(self.arrayrecord_key, "keys differ from the global model's")
        for key, array in record.items():
            expected, value = self.reference[key], array.numpy()
            if (str(value.dtype), value.shape) != (expected.dtype, tuple(expected.shape)):
                raise ReplyError(key, f"expected {expected.dtype} {tuple(expected.shape)}, "
                                 f"got {value.dtype} {value.shape}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ReplyError(key, "values must be finite")
        return record

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's n_k-weighted mean of the valid replies' arrays and metrics."""
        accepted = self.accepted(server_round, replies, self._decode)
        if accepted is None:
            return None, None
        contents = [RecordDict({self.arrayrecord_key: record,
                                METRICS: MetricRecord({NUM_EXAMPLES: num_examples(msg)})})
                    for msg, record in accepted]
        return (aggregate_arrayrecords(contents, self.weighted_by_key),
                mean_metrics([msg.content for msg, _ in accepted], self.weighted_by_key))
