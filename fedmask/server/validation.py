"""What every client reply must pass before it touches an aggregate.

A reply is dropped, with a log line naming the node and the field, when it
carries an error, when its arrays are larger than the model allows (checked on
the serialized sizes, before anything is decoded), when its metrics are not one
``metrics`` record of finite numbers with a positive, bounded ``num-examples``,
or when the method's decoder rejects it (keys, dtypes, lengths, values). Accepted
replies are put in a canonical order (by payload digest) so that aggregation
does not depend on which node answered first; where the aggregate is an integer
sum, which no order changes, the digest covers only each array's first
PREFIX_BYTES (the order then only picks which replies a metric samples).
:class:`ValidatedStrategy` adds the quorum rule: with fewer than
``min_train_nodes`` valid replies the round keeps the previous global state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from logging import INFO, WARNING
from typing import Any, TypeVar

from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch import nn

from fedmask.nn.models import num_prunable
from fedmask.wire.records import METRICS, ReplyError, num_examples

T = TypeVar("T")
SLACK_BYTES = 64 * 1024  # headers of the serialized arrays, small extra records
PREFIX_BYTES = 4096


def reply_limit(model: nn.Module) -> int:
    """The most array bytes any method's reply may carry for `model`: every tensor
    as float32, plus an N-bit mask, plus slack."""
    numel = sum(t.numel() for t in model.state_dict().values())
    return 4 * numel + math.ceil(num_prunable(model) / 8) + SLACK_BYTES


def payload_bytes(content: RecordDict) -> int:
    """Serialized bytes of all arrays in `content` (nothing is decoded)."""
    return sum(len(array.data) for record in content.array_records.values()
               for array in record.values())


def check_reply(msg: Message, limit: int, records: Collection[str] = ()) -> int:
    """Size and metrics checks of a reply, which may carry the MetricRecords named
    in `records` beside its metrics; its `num-examples`. Raise ReplyError."""
    size = payload_bytes(msg.content)
    if size > limit:
        raise ReplyError("arrays", f"{size} bytes exceed the limit of {limit} for this model")
    given = msg.content.metric_records
    if METRICS not in given or not set(given) <= {METRICS, *records}:
        raise ReplyError(METRICS, f"expected the MetricRecord {METRICS!r} (and at most "
                                  f"{sorted(records)}), got {list(given)}")
    for key, value in given[METRICS].items():
        if isinstance(value, (list, bool)) or not math.isfinite(value):
            raise ReplyError(key, f"must be a finite number, got {value!r}")
    return num_examples(msg)


def _digest(msg: Message, prefix: int | None) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for name, record in sorted(msg.content.array_records.items()):
        for key, array in sorted(record.items()):
            digest.update(f"{name}/{key}".encode())
            if prefix is None:
                digest.update(array.data)
            else:  # the length, then the first bytes
                digest.update(f"/{len(array.data)}".encode() + array.data[:prefix])
    return digest.digest()


def _reject(rejected: list[dict[str, Any]], msg: Message, err: Exception) -> None:
    node = msg.metadata.src_node_id
    log(WARNING, "dropping reply from node %d: %s: %s", node, type(err).__name__, err)
    rejected.append({"node": node, "field": getattr(err, "field", type(err).__name__),
                     "reason": str(err)})


def screen(replies: Iterable[Message], limit: int, rejected: list[dict[str, Any]],
           prefix: int | None = None, records: Collection[str] = ()) -> list[Message]:
    """The replies without an error (logged) that pass :func:`check_reply` (with
    `records`), in
    canonical order (by the digest of the payloads, or of their first `prefix`
    bytes); the others are added to `rejected`."""
    passed = []
    for msg in replies:
        if msg.has_error():
            log(WARNING, "node %d failed: %s", msg.metadata.src_node_id, msg.error.reason)
            continue
        try:
            check_reply(msg, limit, records)
            passed.append(msg)
        except Exception as err:  # noqa: BLE001 - any bad reply must not stop the round
            _reject(rejected, msg, err)
    return sorted(passed, key=lambda msg: _digest(msg, prefix))


def decode_each(messages: list[Message], decode: Callable[[Message], T],
                rejected: list[dict[str, Any]]) -> Iterator[tuple[Message, T]]:
    """``(msg, decode(msg))`` one message at a time; one that fails to decode is
    added to `rejected` and skipped."""
    for msg in messages:
        try:
            decoded = decode(msg)
        except Exception as err:  # noqa: BLE001 - any bad payload must not stop the round
            _reject(rejected, msg, err)
            continue
        yield msg, decoded


def accept(replies: Iterable[Message], decode: Callable[[Message], T], limit: int
           ) -> tuple[list[tuple[Message, T]], list[dict[str, Any]]]:
    """Check and decode every reply: the accepted ``(msg, decoded)`` pairs in
    canonical order, and one ``{node, field, reason}`` per rejected reply.
    Replies carrying an error are logged and left out of both."""
    rejected: list[dict[str, Any]] = []
    return list(decode_each(screen(replies, limit, rejected), decode, rejected)), rejected


def mean_metrics(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower's n_k-weighted mean of the metrics every reply has (others are left out)."""
    common = set.intersection(*(set(c.metric_records[METRICS]) for c in contents))
    return aggregate_metricrecords(
        [RecordDict({METRICS: MetricRecord({k: v for k, v in c.metric_records[METRICS].items()
                                            if k in common})}) for c in contents],
        weighted_by_key)


class ValidatedStrategy:
    """Mixin for a Flower FedAvg subclass: validated, ordered replies, the quorum
    rule, a safe client-evaluation mean, and the rejections of every round."""

    min_train_nodes: int
    weighted_by_key: str
    ORDER_PREFIX: int | None = None  # PREFIX_BYTES where the aggregate is an integer sum
    reply_records: frozenset[str] = frozenset()  # MetricRecords a train reply may add

    def init_validation(self, model: nn.Module) -> None:
        """Derive the reply size limit from `model`; start the rejection log."""
        self.reply_limit = reply_limit(model)
        self.rejected: dict[int, list[dict[str, Any]]] = {}

    def stream(self, server_round: int, replies: Iterable[Message],
               decode: Callable[[Message], T]) -> Iterator[tuple[Message, T]]:
        """The round's valid replies, decoded one at a time (so that aggregation can
        stream), in canonical order; rejections are logged in ``rejected``."""
        rejected = self.rejected.setdefault(server_round, [])
        return decode_each(screen(replies, self.reply_limit, rejected, self.ORDER_PREFIX,
                                  self.reply_records), decode, rejected)

    def quorum(self, server_round: int, count: int) -> bool:
        """Whether `count` valid replies are enough; logs the count and the verdict."""
        dropped = len(self.rejected.get(server_round, []))
        log(INFO, "round %d: %d valid replies, %d dropped", server_round, count, dropped)
        if count < self.min_train_nodes:
            log(WARNING, "round %d: %d valid replies, fewer than min-train-nodes = %d: "
                "the global state stays as it was", server_round, count, self.min_train_nodes)
            return False
        return True

    def accepted(self, server_round: int, replies: Iterable[Message],
                 decode: Callable[[Message], T]) -> list[tuple[Message, T]] | None:
        """The round's accepted replies, or None (logged) below the quorum."""
        accepted = list(self.stream(server_round, replies, decode))
        return accepted if self.quorum(server_round, len(accepted)) else None

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Mean of the clients' evaluation metrics over the valid replies."""
        del server_round
        accepted, _ = accept(replies, num_examples, self.reply_limit)
        if not accepted:
            return None
        return mean_metrics([msg.content for msg, _ in accepted], self.weighted_by_key)
