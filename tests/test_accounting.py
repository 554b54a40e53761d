"""Measured message sizes and the measuring grid wrapper."""

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedmask.server.accounting import MeasuringGrid, array_bytes, message_bytes, reply_seconds


def _message(payload_bytes: int, node: int = 5) -> Message:
    content = RecordDict({"a": ArrayRecord({"x": Array(np.zeros(payload_bytes, np.uint8))})})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_size_counts_every_payload_byte_plus_fixed_framing():
    small, large = message_bytes(_message(100)), message_bytes(_message(1100))
    assert small > 100
    assert 1000 <= large - small <= 1004  # payload grows; framing only by length digits


def test_size_grows_with_each_record():
    msg = _message(10)
    before = message_bytes(msg)
    msg.content["m"] = MetricRecord({"num-examples": 3})
    assert message_bytes(msg) > before


def test_array_bytes_are_the_arrays_records_alone_whatever_the_ids_and_metrics():
    msg = _message(1000)
    payload = array_bytes(msg)
    assert 1000 < payload < message_bytes(msg)
    msg.content["m"] = MetricRecord({"start-s": 7.5})
    msg.metadata.__dict__["_message_id"] = "f" * 64  # a SuperLink's id, not a UUID
    assert array_bytes(msg) == payload
    assert array_bytes(Message(RecordDict({"m": MetricRecord({"n": 1})}), dst_node_id=5,
                               message_type=MessageType.TRAIN)) == 0


class _EchoGrid:
    """Inner grid stand-in: every pushed message gets a reply from its destination,
    available from the `ready_after`-th pull on."""

    def __init__(self, make_reply, ready_after: int = 1):
        self.make_reply, self.ready_after = make_reply, ready_after
        self.pushed, self.pulls = {}, 0

    def push_messages(self, messages):
        ids = [f"id{len(self.pushed) + i}" for i, _ in enumerate(messages)]
        self.pushed.update(zip(ids, messages))
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        replies = []
        for message_id in [i for i in self.pushed if i in set(message_ids)]:
            reply = self.make_reply(self.pushed[message_id])
            reply.metadata.__dict__["_reply_to_message_id"] = message_id
            replies.append(reply)
        return replies


def test_measuring_grid_records_each_message_per_node_and_direction(client_reply):
    def make_reply(msg):
        content = RecordDict({"metrics": MetricRecord({"num-examples": 1})})
        return client_reply(content, node=msg.metadata.dst_node_id)

    grid = MeasuringGrid(_EchoGrid(make_reply))
    sent = [_message(300, node=7), _message(500, node=8)]
    replies = list(grid.send_and_receive(sent))
    transfers = grid.ledger.drain()
    assert [(t.node_id, t.direction) for t in transfers] == [(7, "down"), (8, "down"),
                                                             (7, "up"), (8, "up")]
    assert [t.num_bytes for t in transfers] == [message_bytes(m) for m in sent + replies]
    assert grid.ledger.drain() == []


def test_client_seconds_come_from_the_replies_metric(client_reply):
    timed = client_reply(RecordDict({"metrics": MetricRecord({"num-examples": 1,
                                                              "client-s": 2.5,
                                                              "start-s": 4.0})}))
    assert reply_seconds(timed) == 2.5
    assert reply_seconds(timed, "start-s") == 4.0
    assert reply_seconds(client_reply(RecordDict({"metrics": MetricRecord({"x": 1})}))) is None
    assert reply_seconds(client_reply(None)) is None  # an error reply
    grid = MeasuringGrid(_EchoGrid(lambda msg: timed))
    grid.send_and_receive([_message(10, node=7)])
    transfers = grid.ledger.drain()
    assert [(t.client_s, t.start_s) for t in transfers] == [(0.0, None), (2.5, 4.0)]  # down, up


def _echo(client_reply):
    return lambda msg: client_reply(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                                    node=msg.metadata.dst_node_id)


def test_send_and_receive_pulls_until_every_reply_is_in(client_reply):
    inner = _EchoGrid(_echo(client_reply), ready_after=4)
    replies = list(MeasuringGrid(inner).send_and_receive([_message(5, node=7),
                                                          _message(5, node=8)]))
    assert sorted(r.metadata.src_node_id for r in replies) == [7, 8]
    assert inner.pulls == 4  # stopped at the first pull that had every reply


def test_send_and_receive_returns_what_arrived_by_the_timeout(client_reply):
    inner = _EchoGrid(_echo(client_reply), ready_after=10**9)
    grid = MeasuringGrid(inner)
    assert list(grid.send_and_receive([_message(5, node=7)], timeout=0.1)) == []
    assert inner.pulls >= 2
    assert [t.direction for t in grid.ledger.drain()] == ["down"]
