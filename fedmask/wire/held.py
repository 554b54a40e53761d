"""Lean downlink: what a node already holds is not sent again.

The mask methods' global state (HideNseek's prune mask and signs, FedPM's theta
codes) goes down in one ArrayRecord. :class:`Downlink` (server) remembers the
last few global states by digest and, per node, the digest of the state the node
acknowledged (it answered the message that carried it). To a node that holds a
remembered state it sends each array of the state as

- nothing, when the node holds it unchanged;
- ``KEY-flips``, for packed bit arrays (kind ``"bits"``): the bits that changed,
  range coded as i.i.d. bits;
- ``KEY-delta``, for per-position ``uint8`` codes (kind ``"codes"``): the codes,
  range coded under the distribution of codes sharing the held code;
- in full, when coding would not be smaller, or to a node that holds nothing or
  a state no longer remembered.

The message's config names the state's digest (``state-digest``), the keys of
the state (``state-keys``) and, when anything was coded against the held state,
its digest (``base-digest``). :func:`restore` (client) rebuilds the full record
from ``context.state``, checks the digest, and keeps the new state there. A node
that lost its state (a restart) refuses a coded message with
:class:`StaleStateError`; the server then forgets what it held and sends the
state in full to it next time. Nothing is ever decoded into a wrong state: a
corrupted payload or a wrong base fails the digest check (CodecError).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmask.wire import entropy
from fedmask.wire.bits import CodecError
from fedmask.wire.records import CONFIG

STATE_DIGEST, BASE_DIGEST, STATE_KEYS = "state-digest", "base-digest", "state-keys"
STATE_RECORD = "state-record"  # config: the ArrayRecord holding the state
FLIPS, DELTA = "-flips", "-delta"
KINDS = ("bits", "codes")
HELD, HELD_DIGEST = "fedmask-held", "fedmask-held-digest"  # context.state: arrays, digest
HISTORY = 8  # global states the server remembers


class StaleStateError(CodecError):
    """A downlink is coded against a state this node does not hold."""


def state_digest(arrays: dict[str, np.ndarray]) -> str:
    """Hex BLAKE2b digest of named arrays (keys, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(arrays):
        digest.update(f"{key}:{arrays[key].dtype.str}:".encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def _flips(new: np.ndarray, held: np.ndarray) -> np.ndarray:
    """The changed bits of two packed arrays, as booleans."""
    return np.unpackbits(np.bitwise_xor(new, held)).view(bool)


def _code(key: str, kind: str, new: np.ndarray, held: np.ndarray) -> tuple[str, np.ndarray]:
    """The smallest of ``key`` in full and its coding against `held`."""
    if new.shape != held.shape or new.dtype != held.dtype or new.dtype != np.uint8:
        return key, new
    if kind == "bits":
        coded, name = entropy.encode(_flips(new, held)), key + FLIPS
    else:
        coded, name = entropy.encode_codes(new, held), key + DELTA
    return (name, coded) if coded.nbytes < new.nbytes else (key, new)


def _decode(record: ArrayRecord, key: str, held: dict[str, np.ndarray]) -> np.ndarray:
    """Array `key` of the state from `record` and the `held` arrays."""
    if key in record:
        return record[key].numpy()
    if key not in held:
        raise StaleStateError(key, "not in the message, and this node holds none")
    base = held[key]
    if key + FLIPS in record:
        flips = entropy.decode(record[key + FLIPS].numpy(), base.size * 8, field=key + FLIPS)
        return np.bitwise_xor(base, np.packbits(flips))
    if key + DELTA in record:
        return entropy.decode_codes(record[key + DELTA].numpy(), base, field=key + DELTA)
    return base


class Downlink:
    """Server side: per node, the state it holds; messages coded against it.

    Parameters
    ----------
    kinds : dict[str, str]
        The state's array keys and their kind, ``"bits"`` (packed) or ``"codes"``.
    history : int
        How many recent global states are remembered as bases.
    """

    def __init__(self, kinds: dict[str, str], history: int = HISTORY) -> None:
        unknown = set(kinds.values()) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds: {sorted(unknown)} not in {list(KINDS)}")
        self.kinds, self.history = kinds, history
        self.states: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.held: dict[int, str] = {}  # node -> digest of the state it acknowledged
        self.pending: dict[int, str] = {}  # node -> digest of the state last sent
        self.seen: set[int] = set()  # nodes ever sent a state
        self.resent_bytes = 0  # array bytes sent in full again to a node seen before

    def _remember(self, arrays: dict[str, np.ndarray]) -> str:
        digest = state_digest(arrays)
        self.states[digest] = arrays
        self.states.move_to_end(digest)
        while len(self.states) > self.history:
            self.states.popitem(last=False)
        return digest

    def lean(self, messages: Iterable[Message], record_key: str) -> list[Message]:
        """`messages` with their `record_key` record coded against what each
        destination node holds (each message gets its own content; a state is
        digested, and coded against one base, once per call)."""
        out = []
        states: dict[int, tuple[ArrayRecord, str, dict[str, np.ndarray]]] = {}  # id(record)
        coded: dict[tuple[str, str | None], ArrayRecord] = {}  # (state, base) digests
        for msg in messages:
            record = msg.content.array_records[record_key]
            if id(record) not in states:  # the record is kept in the value: ids stay unique
                state = {k: record[k].numpy() for k in self.kinds if k in record}
                states[id(record)] = (record, self._remember(state), state)
            _, digest, state = states[id(record)]
            node = msg.metadata.dst_node_id
            base_digest = self.held.get(node)
            base = self.states.get(base_digest) if base_digest else None
            key = (digest, base_digest if base is not None else None)
            if key not in coded:
                coded[key] = self._encode(record, state, base)
            arrays = coded[key]
            config = ConfigRecord(dict(msg.content.config_records[CONFIG]))
            config.update({STATE_DIGEST: digest, STATE_KEYS: sorted(state),
                           STATE_RECORD: record_key})
            if base is not None:
                config[BASE_DIGEST] = str(base_digest)
            elif node in self.seen:
                self.resent_bytes += sum(len(arrays[k].data) for k in state)
            msg.content = RecordDict({**msg.content.array_records, record_key: arrays,
                                      **msg.content.metric_records,
                                      **msg.content.config_records, CONFIG: config})
            self.pending[node] = digest
            self.seen.add(node)
            out.append(msg)
        return out

    def _encode(self, record: ArrayRecord, state: dict[str, np.ndarray],
                base: dict[str, np.ndarray] | None) -> ArrayRecord:
        arrays = ArrayRecord({k: v for k, v in record.items() if k not in state})
        for key, new in state.items():
            if base is not None and key in base and np.array_equal(new, base[key]):
                continue
            name, payload = (key, new) if base is None or key not in base else \
                _code(key, self.kinds[key], new, base[key])
            arrays[name] = Array(payload)
        return arrays

    def acknowledge(self, replies: Iterable[Message]) -> None:
        """Nodes that answered hold what they were sent; a node whose reply is an
        error may hold nothing (it is sent its state in full next time)."""
        for msg in replies:
            node = msg.metadata.src_node_id
            sent = self.pending.pop(node, None)
            if msg.has_error():
                self.held.pop(node, None)
            elif sent is not None:
                self.held[node] = sent

    def drain_resent(self) -> int:
        """Bytes re-sent in full since the last call."""
        out, self.resent_bytes = self.resent_bytes, 0
        return out


def restore(msg: Message, state: RecordDict) -> None:
    """Rebuild `msg`'s lean state record in full from what this node holds (in
    `state`, the node's ``context.state``), check it against the message's digest,
    and keep it in `state`. Messages without ``state-digest`` are left as they are.
    Raise StaleStateError when the message is coded against a state not held here."""
    config = msg.content.config_records.get(CONFIG)
    if config is None or STATE_DIGEST not in config:
        return
    record_key = str(config[STATE_RECORD])
    held_digest = (str(state.config_records[HELD_DIGEST]["digest"])
                   if HELD_DIGEST in state.config_records else "none")
    held = ({k: v.numpy() for k, v in state.array_records[HELD].items()}
            if HELD in state.array_records else {})
    base_digest = str(config.get(BASE_DIGEST, held_digest))
    if base_digest != held_digest:
        raise StaleStateError(BASE_DIGEST, f"the message is coded against state "
                                           f"{base_digest}, this node holds {held_digest}")
    record = msg.content.array_records[record_key]
    keys = [str(k) for k in config[STATE_KEYS]]  # type: ignore[union-attr]
    full = {key: _decode(record, key, held) for key in keys}
    if state_digest(full) != config[STATE_DIGEST]:
        raise CodecError(STATE_DIGEST, "the rebuilt state does not match its digest")
    coded = {key + suffix for key in keys for suffix in (FLIPS, DELTA)}
    rest = {k: v for k, v in record.items() if k not in keys and k not in coded}
    msg.content.array_records[record_key] = ArrayRecord(
        {**rest, **{k: Array(v) for k, v in full.items()}})
    state.array_records[HELD] = ArrayRecord({k: Array(v) for k, v in full.items()})
    state.config_records[HELD_DIGEST] = ConfigRecord({"digest": str(config[STATE_DIGEST])})
    for key in (STATE_DIGEST, BASE_DIGEST, STATE_KEYS, STATE_RECORD):  # restored: once only
        config.pop(key, None)
