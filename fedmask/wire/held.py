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
- ``KEY-fresh``, to a node that holds nothing (or a state no longer
  remembered): bits range coded within a *context* (the method's, see
  :data:`Context`; without one as i.i.d. bits), codes under their overall
  distribution;
- in full, when coding would not be smaller, or to a node whose last reply was
  an error (whatever went wrong, it then gets the plain arrays).

A method's context is what both sides derive alike from what they hold anyway,
as groups and bins (:class:`~fedmask.wire.entropy.Groups`): each group's share
of ones travels first, in 4 bits, then each bit is coded under its (share, bin).
HideNseek's groups are the seeded weights' output units (with the sign of w,
for g), its bins their magnitude quantiles within the layer: SynFlow keeps
whole units' large weights, and a unit's signs flip together, so P goes to a
new node in about a tenth of its packed size. Flips are coded within the
context too.

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
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmask.wire import entropy
from fedmask.wire.bits import CodecError
from fedmask.wire.records import CONFIG

STATE_DIGEST, BASE_DIGEST, STATE_KEYS = "state-digest", "base-digest", "state-keys"
STATE_SIZES, STATE_KINDS = "state-sizes", "state-kinds"  # config: bytes and kind per key
STATE_RECORD = "state-record"  # config: the ArrayRecord holding the state
FLIPS, DELTA, FRESH = "-flips", "-delta", "-fresh"
KINDS = ("bits", "codes")
HELD, HELD_DIGEST = "fedmask-held", "fedmask-held-digest"  # context.state: arrays, digest
HISTORY = 8  # global states the server remembers


Context = Callable[[str, dict[str, np.ndarray]], "entropy.Groups | None"]
"""A method's coding context of bits array `key`, given the state's arrays that
precede it in sorted key order (as on the wire: bits packed): a group and a bin
per bit, or None. Server and node must compute it alike (from the seeded
weights both rebuild: their hash is checked)."""


class StaleStateError(CodecError):
    """A downlink is coded against a state this node does not hold."""


def state_digest(arrays: dict[str, np.ndarray]) -> str:
    """Hex BLAKE2b digest of named arrays (keys, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(arrays):
        digest.update(f"{key}:{arrays[key].dtype.str}:".encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def _context(context: Context | None, key: str, arrays: dict[str, np.ndarray],
            length: int) -> entropy.Groups | None:
    """The method's context of bits `key`, padded with group and bin 0 to `length`
    bits, or None."""
    found = context(key, arrays) if context is not None else None
    if found is None:
        return None
    groups, bins = found
    if (groups.ndim != 1 or groups.dtype.kind not in "iu" or groups.shape != bins.shape
            or groups.size > length or (groups.size and groups.min() < 0)
            or bins.dtype != np.uint8 or (bins.size and bins.max() >= entropy.BINS)):
        raise CodecError(key, f"context of {groups.dtype} groups {groups.shape} and "
                              f"{bins.dtype} bins {bins.shape} for {length} bits")
    padded = entropy.Groups(np.zeros(length, dtype=groups.dtype), np.zeros(length, np.uint8))
    padded.groups[:groups.size], padded.bins[:bins.size] = groups, bins
    return padded


def _encode_bits(bits: np.ndarray, context: entropy.Groups | None) -> np.ndarray:
    if context is None:
        return entropy.encode(bits.view(bool))
    return entropy.encode_grouped(bits, context)


def _decode_bits(payload: np.ndarray, length: int, context: entropy.Groups | None,
                 field: str) -> np.ndarray:
    if context is None:
        return entropy.decode(payload, length, field=field).view(np.uint8)
    return entropy.decode_grouped(payload, context, field)


def _code(key: str, kind: str, new: np.ndarray, held: np.ndarray | None,
          context: entropy.Groups | None) -> tuple[str, np.ndarray]:
    """The smallest of ``key`` in full and its coding against `held` (None: fresh)."""
    if new.dtype != np.uint8 or (held is not None and (new.shape != held.shape
                                                        or held.dtype != np.uint8)):
        return key, new
    if kind == "bits":
        bits = np.unpackbits(new if held is None else np.bitwise_xor(new, held))  # + padding
        coded = _encode_bits(bits, context)
    elif held is None:
        coded = entropy.encode_codes(new, np.zeros(new.size, np.uint8))
    else:
        coded = entropy.encode_codes(new, held)
    name = key + (FRESH if held is None else FLIPS if kind == "bits" else DELTA)
    return (name, coded) if coded.nbytes < new.nbytes else (key, new)


def _decode(record: ArrayRecord, key: str, kind: str, size: int,
            held: dict[str, np.ndarray], context: entropy.Groups | None) -> np.ndarray:
    """Array `key` (`size` bytes) of the state from `record` and the `held` arrays."""
    if key in record:
        return record[key].numpy()
    if key + FRESH in record:
        payload = record[key + FRESH].numpy()
        if kind == "bits":
            return np.packbits(_decode_bits(payload, 8 * size, context, key + FRESH))
        return entropy.decode_codes(payload, np.zeros(size, np.uint8), field=key + FRESH)
    if key not in held:
        raise StaleStateError(key, "not in the message, and this node holds none")
    base = held[key]
    if key + FLIPS in record:
        flips = _decode_bits(record[key + FLIPS].numpy(), base.size * 8, context, key + FLIPS)
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
    context : Context, optional
        The method's coding context (see :data:`Context`).
    """

    def __init__(self, kinds: dict[str, str], history: int = HISTORY,
                 context: Context | None = None) -> None:
        unknown = set(kinds.values()) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds: {sorted(unknown)} not in {list(KINDS)}")
        self.kinds, self.history, self.context = kinds, history, context
        self.states: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.held: dict[int, str] = {}  # node -> digest of the state it acknowledged
        self.pending: dict[int, str] = {}  # node -> digest of the state last sent
        self.seen: set[int] = set()  # nodes ever sent a state
        self.plain: set[int] = set()  # nodes whose last reply was an error
        self.resent_bytes = 0  # array bytes sent again to a node seen before

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
        coded: dict[tuple[str, str | None, bool], ArrayRecord] = {}  # state, base, plain
        for msg in messages:
            record = msg.content.array_records[record_key]
            if id(record) not in states:  # the record is kept in the value: ids stay unique
                state = {k: record[k].numpy() for k in sorted(self.kinds) if k in record}
                states[id(record)] = (record, self._remember(state), state)
            _, digest, state = states[id(record)]
            node = msg.metadata.dst_node_id
            base_digest = self.held.get(node)
            base = self.states.get(base_digest) if base_digest else None
            key = (digest, base_digest if base is not None else None, node in self.plain)
            if key not in coded:
                coded[key] = self._encode(record, state, base, plain=node in self.plain)
            arrays = coded[key]
            config = ConfigRecord(dict(msg.content.config_records[CONFIG]))
            config.update({STATE_DIGEST: digest, STATE_KEYS: list(state),
                           STATE_SIZES: [int(v.size) for v in state.values()],
                           STATE_KINDS: [self.kinds[k] for k in state],
                           STATE_RECORD: record_key})
            if base is not None:
                config[BASE_DIGEST] = str(base_digest)
            elif node in self.seen:
                self.resent_bytes += sum(len(a.data) for k, a in arrays.items()
                                         if k in state or k.removesuffix(FRESH) in state)
            msg.content = RecordDict({**msg.content.array_records, record_key: arrays,
                                      **msg.content.metric_records,
                                      **msg.content.config_records, CONFIG: config})
            self.pending[node] = digest
            self.seen.add(node)
            out.append(msg)
        return out

    def _encode(self, record: ArrayRecord, state: dict[str, np.ndarray],
                base: dict[str, np.ndarray] | None, plain: bool) -> ArrayRecord:
        arrays = ArrayRecord({k: v for k, v in record.items() if k not in state})
        for key, new in state.items():
            held = None if base is None else base.get(key)
            if held is not None and np.array_equal(new, held):
                continue
            if plain:
                arrays[key] = Array(new)
                continue
            kind = self.kinds[key]
            context = (_context(self.context, key, state, new.size * 8) if kind == "bits"
                       else None)
            name, payload = _code(key, kind, new, held, context)
            arrays[name] = Array(payload)
        return arrays

    def acknowledge(self, replies: Iterable[Message]) -> None:
        """Nodes that answered hold what they were sent; a node whose reply is an
        error may hold nothing (it is sent its state in full, plain, next time)."""
        for msg in replies:
            node = msg.metadata.src_node_id
            sent = self.pending.pop(node, None)
            if msg.has_error():
                self.held.pop(node, None)
                self.plain.add(node)
            elif sent is not None:
                self.held[node] = sent
                self.plain.discard(node)

    def drain_resent(self) -> int:
        """Bytes re-sent to nodes that lost their state, since the last call."""
        out, self.resent_bytes = self.resent_bytes, 0
        return out


def restore(msg: Message, state: RecordDict,
            context: Callable[[], Context | None] | None = None) -> None:
    """Rebuild `msg`'s lean state record in full from what this node holds (in
    `state`, the node's ``context.state``), check it against the message's digest,
    and keep it in `state`. `context` gives the method's coding context (called
    only when a coded array needs it). Messages without ``state-digest`` are left
    as they are. Raise StaleStateError when the message is coded against a state
    not held here, CodecError when anything fails to decode or check."""
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
    sizes = [int(n) for n in config[STATE_SIZES]]  # type: ignore[union-attr]
    kinds = [str(k) for k in config[STATE_KINDS]]  # type: ignore[union-attr]
    method_context: Context | None = None
    full: dict[str, np.ndarray] = {}
    for key, size, kind in zip(keys, sizes, kinds, strict=True):
        coding = None
        if kind == "bits" and (key + FRESH in record or key + FLIPS in record):
            if method_context is None and context is not None:
                method_context = context()
            coding = _context(method_context, key, full, size * 8)
        full[key] = _decode(record, key, kind, size, held, coding)
    if state_digest(full) != config[STATE_DIGEST]:
        raise CodecError(STATE_DIGEST, "the rebuilt state does not match its digest")
    coded = {key + suffix for key in keys for suffix in (FLIPS, DELTA, FRESH)}
    rest = {k: v for k, v in record.items() if k not in keys and k not in coded}
    msg.content.array_records[record_key] = ArrayRecord(
        {**rest, **{k: Array(v) for k, v in full.items()}})
    state.array_records[HELD] = ArrayRecord({k: Array(v) for k, v in full.items()})
    state.config_records[HELD_DIGEST] = ConfigRecord({"digest": str(config[STATE_DIGEST])})
    for key in (STATE_DIGEST, BASE_DIGEST, STATE_KEYS, STATE_SIZES, STATE_KINDS, STATE_RECORD):
        config.pop(key, None)  # restored: once only
