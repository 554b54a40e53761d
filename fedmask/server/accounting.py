"""Bytes on the wire, measured from the Flower messages really sent and received.

Flower 1.41 ships a message as a header (metadata protobuf), an object tree,
and one serialized object per record/array. :func:`message_bytes` adds up
exactly those serialized pieces. :class:`MeasuringGrid` wraps the ServerApp's
grid and records the size of every message pushed to (down) or pulled from
(up) each node, without changing what is sent. It also waits for replies with a
short poll: Flower's own ``send_and_receive`` sleeps 3 s between pulls, which
made every round of a small run last at least 6 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.app.message.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
)

from fedmask.wire.records import CLIENT_SECONDS, METRICS, START_SECONDS

# Seconds between pulls for replies: the first wait, doubled up to the longest.
FIRST_POLL_S, LONGEST_POLL_S = 0.02, 0.5


def message_sizes(msg: Message) -> tuple[int, int]:
    """Serialized size of `msg` (header + object tree + every object's bytes) and of
    its ArrayRecords and their arrays (the payload a method sends, without Flower's
    framing, whose ids differ between a simulation and a deployment, see
    docs/guide/results.md); each object serialized once."""
    header = message_to_proto(remove_content_from_message(msg)).ByteSize()
    if msg.has_error():
        return header, 0
    sizes = {oid: len(obj.deflate()) for oid, obj in get_all_nested_objects(msg).items()}
    arrays = sum(sizes[oid] for record in msg.content.array_records.values()
                 for oid in get_all_nested_objects(record))
    return header + get_object_tree(msg).ByteSize() + sum(sizes.values()), arrays


def message_bytes(msg: Message) -> int:
    """Serialized size of `msg` (see :func:`message_sizes`)."""
    return message_sizes(msg)[0]


def array_bytes(msg: Message) -> int:
    """Serialized size of `msg`'s ArrayRecords and their arrays (see
    :func:`message_sizes`)."""
    return message_sizes(msg)[1]


def reply_seconds(msg: Message, key: str = CLIENT_SECONDS) -> float | None:
    """A reply's seconds metric `key` (None when absent or not a number)."""
    if msg.has_error() or METRICS not in msg.content.metric_records:
        return None
    value = msg.content.metric_records[METRICS].get(key)
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Transfer:
    """One message on the wire."""

    node_id: int
    direction: str  # "up" (node -> server) or "down" (server -> node)
    message_type: str
    num_bytes: int
    array_bytes: int = 0  # of num_bytes, the ArrayRecords' (see array_bytes)
    failed: bool = False
    client_s: float = 0.0  # a reply's `client-s`: seconds the ClientApp spent on it
    start_s: float | None = None  # its `start-s`: its process's start to its first step


@dataclass
class Ledger:
    """Transfers recorded since the last :meth:`drain`."""

    transfers: list[Transfer] = field(default_factory=list)

    def add(self, msg: Message, direction: str, node: int | None = None) -> None:
        """Record `msg` going `direction`, to or from `node` (else its metadata's)."""
        if node is None:
            node = msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id
        self.transfers.append(Transfer(node, direction, msg.metadata.message_type,
                                       *message_sizes(msg), msg.has_error(),
                                       reply_seconds(msg) or 0.0,
                                       reply_seconds(msg, START_SECONDS)))

    def drain(self) -> list[Transfer]:
        """Return and forget the transfers recorded so far."""
        out, self.transfers = self.transfers, []
        return out


class MeasuringGrid(Grid):
    """A :class:`flwr.serverapp.Grid` that measures every message it carries."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.ledger = Ledger()
        self.recipients: dict[str, int] = {}  # message id -> node, until its reply

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run type
        self.inner.set_run(run)

    @property
    def run(self):  # noqa: ANN201
        return self.inner.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            self.ledger.add(msg, "down")
        ids = list(self.inner.push_messages(messages))
        self.recipients.update(zip(ids, (msg.metadata.dst_node_id for msg in messages)))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies; each is counted for the node its message went to (an error
        reply the SuperLink makes for an unavailable node comes from the SuperLink)."""
        replies = list(self.inner.pull_messages(message_ids))
        for msg in replies:
            self.ledger.add(msg, "up", self.recipients.pop(msg.metadata.reply_to_message_id,
                                                         None))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push `messages`, each expiring after `timeout` seconds (its TTL: no node
        starts, or goes on with, work nobody waits for), then pull until every reply
        is in or `timeout` seconds pass (None: wait for all), waiting FIRST_POLL_S
        doubling to LONGEST_POLL_S."""
        messages = list(messages)
        for msg in messages:
            if timeout is not None:
                msg.metadata.ttl = timeout
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = FIRST_POLL_S
        while pending:
            pulled = list(self.pull_messages(pending))
            replies.extend(pulled)
            pending -= {msg.metadata.reply_to_message_id for msg in pulled}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(wait)
            wait = min(2 * wait, LONGEST_POLL_S)
        for message_id in pending:  # unanswered: no reply will be read
            self.recipients.pop(message_id, None)
        return replies
