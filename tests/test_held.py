"""Lean downlink (fedmask.wire.held): nodes get what they lack, decode bit for bit."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmask.wire import entropy
from fedmask.wire.bits import CodecError
from fedmask.wire.held import FLIPS, FRESH, Downlink, StaleStateError, restore

KINDS = {"prune": "bits", "signs": "bits", "theta": "codes"}
SIZE = 20_000  # weights of the context tests


def _states(rounds: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Global states that drift a little each round, as a vote's do."""
    rng = np.random.default_rng(seed)
    prune = rng.integers(0, 256, 500, dtype=np.uint8)
    signs = rng.random(4000) < 0.5
    theta = rng.choice(np.array([2, 60, 128, 200, 253], np.uint8), 4000)
    out = []
    for _ in range(rounds):
        signs = signs ^ (rng.random(signs.size) < 0.02)
        theta = np.where(rng.random(theta.size) < 0.1, rng.choice(theta, theta.size), theta)
        out.append({"prune": prune, "signs": np.packbits(signs), "theta": theta.astype(np.uint8)})
    return out


def _send(downlink: Downlink, state: dict[str, np.ndarray], nodes: list[int]) -> list[Message]:
    record = ArrayRecord({**{k: Array(v) for k, v in state.items()},
                          "extra": Array(np.arange(3, dtype=np.uint8))})
    messages = [Message(RecordDict({"masks": record, "config": ConfigRecord({"x": 1})}),
                        dst_node_id=node, message_type="train") for node in nodes]
    return downlink.lean(messages, "masks")


def _ok(node: int) -> Message:
    return make_message(_meta(node), content=RecordDict())


def _failed(node: int) -> Message:
    return make_message(_meta(node), error=Error(1, "stale"))


def _meta(node: int) -> Metadata:
    return Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id="1", created_at=time.time(),
                    ttl=60.0, message_type="train")


def _full(msg: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in msg.content.array_records["masks"].items()}


def test_every_node_decodes_the_same_state_whatever_rounds_it_missed():
    states, downlink = _states(6), Downlink(KINDS)
    held = {node: RecordDict() for node in (1, 2, 3)}
    schedule = {0: [1, 2], 1: [1], 2: [1], 3: [1, 2], 4: [1], 5: [1, 2, 3]}  # 3 is fresh at 5
    for index, state in enumerate(states):
        nodes = schedule[index]
        messages = _send(downlink, state, nodes)
        for msg in messages:
            restore(msg, held[msg.metadata.dst_node_id])
            decoded = _full(msg)
            for key, value in state.items():
                assert np.array_equal(decoded[key], value), (index, key)
            assert np.array_equal(decoded["extra"], np.arange(3))  # other arrays go as they are
        downlink.acknowledge([_ok(node) for node in nodes])
    sizes = {msg.metadata.dst_node_id: sum(len(a.data) for a in msg.content.array_records[
        "masks"].values()) for msg in _send(downlink, states[-1], [1, 2, 3])}
    extra = len(Array(np.arange(3, dtype=np.uint8)).data)
    assert sizes[1] == extra  # holds the current state: nothing but the extra array goes
    assert sizes[3] == extra


def test_a_node_that_missed_rounds_gets_flips_and_a_fresh_node_everything():
    states, downlink = _states(4), Downlink(KINDS)
    first = _send(downlink, states[0], [1])[0]
    assert set(first.content.array_records["masks"]) == {"prune", "signs", "theta" + FRESH,
                                                          "extra"}
    downlink.acknowledge([_ok(1)])
    later = _send(downlink, states[3], [1, 2])
    coded = later[0].content.array_records["masks"]
    assert "prune" not in coded and "signs" + FLIPS in coded and "theta-delta" in coded
    fresh = later[1].content.array_records["masks"]  # in full, or coded where smaller
    assert set(fresh) == {"prune", "signs", "theta" + FRESH, "extra"}
    assert len(fresh["theta" + FRESH].data) < 0.5 * states[3]["theta"].nbytes
    flips = sum(len(coded[k].data) for k in ("signs" + FLIPS, "theta-delta"))
    assert flips < 0.6 * (states[3]["signs"].nbytes + states[3]["theta"].nbytes)


def test_a_node_that_lost_its_state_refuses_then_gets_it_in_full():
    states, downlink = _states(2), Downlink(KINDS)
    node_state = RecordDict()
    restore(_send(downlink, states[0], [1])[0], node_state)
    downlink.acknowledge([_ok(1)])
    coded = _send(downlink, states[1], [1])[0]
    with pytest.raises(StaleStateError, match="base-digest"):
        restore(coded, RecordDict())  # the node restarted: it holds nothing
    downlink.acknowledge([_failed(1)])
    again = _send(downlink, states[1], [1])[0]
    assert downlink.drain_resent() > states[1]["theta"].nbytes
    fresh = RecordDict()
    restore(again, fresh)
    assert np.array_equal(_full(again)["theta"], states[1]["theta"])


@pytest.mark.parametrize("key", ["signs" + FLIPS, "theta-delta"])
def test_a_corrupted_coded_downlink_is_refused(key):
    states, downlink = _states(2), Downlink(KINDS)
    node_state = RecordDict()
    restore(_send(downlink, states[0], [1])[0], node_state)
    downlink.acknowledge([_ok(1)])
    msg = _send(downlink, states[1], [1])[0]
    record = msg.content.array_records["masks"]
    payload = record[key].numpy().copy()
    payload[payload.size // 2] ^= 0xFF
    record[key] = Array(payload)
    with pytest.raises(CodecError):
        restore(msg, node_state)


@pytest.mark.parametrize("key", ["prune", "signs"])
def test_a_corrupted_fresh_downlink_is_refused(key):
    state = _context_states(1)[0]
    msg = _send(Downlink({"prune": "bits", "signs": "bits"}, context=_magnitude_context),
                state, [1])[0]
    record = msg.content.array_records["masks"]
    payload = record[key + FRESH].numpy().copy()
    payload[payload.size // 2] ^= 0x5A
    record[key + FRESH] = Array(payload)
    node_state = RecordDict()
    with pytest.raises(CodecError):
        restore(msg, node_state, lambda: _magnitude_context)
    assert not node_state.array_records  # nothing kept


def test_a_downlink_coded_against_another_state_is_refused():
    states, downlink = _states(3), Downlink(KINDS)
    node_state = RecordDict()
    restore(_send(downlink, states[0], [1])[0], node_state)
    downlink.acknowledge([_ok(1)])
    other = RecordDict()
    restore(_send(Downlink(KINDS), states[2], [1])[0], other)  # holds a different state
    with pytest.raises(StaleStateError):
        restore(_send(downlink, states[1], [1])[0], other)


def test_restore_leaves_plain_messages_alone_and_runs_once():
    plain = Message(RecordDict({"masks": ArrayRecord({"a": Array(np.ones(2))})}),
                    dst_node_id=1, message_type="train")
    restore(plain, RecordDict())
    assert list(plain.content.array_records["masks"]) == ["a"]
    downlink, node_state = Downlink(KINDS), RecordDict()
    msg = _send(downlink, _states(1)[0], [1])[0]
    restore(msg, node_state)
    restore(msg, node_state)  # already restored: a no-op
    assert np.array_equal(_full(msg)["theta"], _states(1)[0]["theta"])


def test_codes_round_trip_and_refuse_a_wrong_context():
    rng = np.random.default_rng(3)
    held = rng.integers(0, 256, 3000, dtype=np.uint8)
    new = np.where(rng.random(3000) < 0.7, held, 7).astype(np.uint8)
    payload = entropy.encode_codes(new, held)
    assert np.array_equal(entropy.decode_codes(payload, held), new)
    with pytest.raises(CodecError):
        entropy.decode_codes(payload, np.roll(held, 1))
    with pytest.raises(CodecError, match="truncated"):
        entropy.decode_codes(payload[:9], held)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kinds"):
        Downlink({"x": "floats"})


def _magnitude_context(key: str, arrays: dict[str, np.ndarray]) -> entropy.Groups | None:
    """A test context: the bin is the |w| decile, the group a unit of 100 weights;
    the signs' context is that of the kept positions, read from P (decoded first)."""
    groups, bins = np.arange(SIZE) // 100, (np.arange(SIZE) % 10).astype(np.uint8)
    if key == "prune":
        return entropy.Groups(groups, bins)
    if key != "signs":
        return None
    kept = np.unpackbits(arrays["prune"]).view(bool)
    return entropy.Groups(groups[kept], bins[kept])


def _context_states(rounds: int) -> list[dict[str, np.ndarray]]:
    """P keeps the large |w| of live units (a unit in four is dead), and a unit's
    signs lean one way (small |w| flip most)."""
    rng = np.random.default_rng(5)
    bins, units = np.arange(SIZE) % 10, np.arange(SIZE) // 100
    alive = (units % 4 != 0) & (rng.random(SIZE) < 0.98)
    prune = alive & (rng.random(SIZE) < np.where(bins >= 5, 0.97, 0.03))
    lean = rng.random(SIZE // 100)[units]
    signs = rng.random(int(prune.sum())) < lean[prune]
    out = []
    for _ in range(rounds):
        signs = signs ^ (rng.random(signs.size) < 0.05 * (bins[prune] < 3))
        out.append({"prune": np.packbits(prune), "signs": np.packbits(signs)})
    return out


def test_a_method_context_codes_a_fresh_state_smaller_and_every_state_bit_for_bit():
    states = _context_states(3)
    kinds = {"prune": "bits", "signs": "bits"}
    with_context, without = Downlink(kinds, context=_magnitude_context), Downlink(kinds)
    node_state = RecordDict()
    for index, state in enumerate(states):
        msg = _send(with_context, state, [1])[0]
        plain = _send(without, state, [1])[0]
        sizes = [sum(len(a.data) for a in m.content.array_records["masks"].values())
                 for m in (msg, plain)]
        if index == 0:  # the node holds nothing: the context pays
            assert sizes[0] < 0.8 * sizes[1], sizes
        restore(msg, node_state, lambda: _magnitude_context)
        for key, value in state.items():
            assert np.array_equal(_full(msg)[key], value)
        for downlink in (with_context, without):
            downlink.acknowledge([_ok(1)])


def test_a_node_with_another_context_refuses_then_gets_plain_arrays():
    state, downlink = _context_states(1)[0], Downlink({"prune": "bits", "signs": "bits"},
                                                       context=_magnitude_context)
    msg = _send(downlink, state, [1])[0]
    assert "prune" + FRESH in msg.content.array_records["masks"]

    def other(key: str, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
        found = _magnitude_context(key, arrays)
        return None if found is None else entropy.Groups(found.groups, np.roll(found.bins, 1))

    with pytest.raises(CodecError):
        restore(msg, RecordDict(), lambda: other)
    downlink.acknowledge([_failed(1)])
    again = _send(downlink, state, [1])[0]
    assert set(again.content.array_records["masks"]) == {"prune", "signs", "extra"}
    assert downlink.drain_resent() == state["prune"].nbytes + state["signs"].nbytes + 2 * 128
    node_state = RecordDict()
    restore(again, node_state, lambda: other)  # plain arrays need no context
    assert np.array_equal(_full(again)["signs"], state["signs"])
