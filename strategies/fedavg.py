"""Dense FedAvg, the reference: Flower's FedAvg with every reply validated first."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fedmask.server.checkpoint import Checkpointable
from fedmask.wire.records import METRICS, NUM_EXAMPLES, ReplyError, num_examples
from fedmask.server.validation import ValidatedStrategy, mean_metrics


class FedAvg(ValidatedStrategy, Checkpointable, FlowerFedAvg):
    """Flower's FedAvg, except that a reply whose ArrayRecord does not match the
    global model (keys, dtypes, shapes, finite values) or fails
    :mod:`fedmask.server.validation` is dropped instead of stopping the round (Flower's
    ``validate_message_reply_consistency`` raises on the whole round).

    Parameters
    ----------
    model : nn.Module
        The global model's architecture (bounds the size of a reply).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_validation(model)
        self.reference = ArrayRecord(model.state_dict())

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's, remembering `arrays` as the shape of a valid reply."""
        self.reference = arrays
        return super().configure_train(server_round, arrays, config, grid)

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
