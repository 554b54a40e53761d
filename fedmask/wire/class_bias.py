"""Wire contract of the federated per-class logit offset (HideNseek's ``class-bias``).

Down: the config names the output layer (``class-bias-layer``, a module name of
the model) whenever the offset is on, and carries ``class-bias``, the C offsets
b added to the output layer's logits (float32 values as a list of floats: ten
cost about 100 bytes there, an Array about 600), in evaluate messages and
model files, and in train messages from round 2 (round 1 trains from no voted
model, and has none). The server keeps b in its state's ArrayRecord (the
checkpoint, the evaluation, the final digest). Up (train replies to a message that
carries b): a ``class-stats`` MetricRecord with
``class-ids`` (the k classes the client holds), ``class-counts`` (its examples
of each) and ``class-probs`` (k x C, row by row: for each of those classes,
the mean softmax of the logits + b over its examples, at the global model the
client received, in units of 1/65535), all lists of ints: protobuf codes them
as varints, about 0.3 to 0.5 kB a reply for ten classes (an ArrayRecord of
the same numbers costs 0.9 to 2.5 kB, measured). A reply without the record
is valid (a loop that did not report); a malformed one is rejected.

With ``class-bias-report = "voted"`` train messages carry no b and their replies
no statistics: after the vote the server sends the voted model (its signs and b)
in a query message to the nodes whose train replies it took, and each answers
with the same ``class-stats`` record, taken at that model. The offsets then step
on the model they are published with, not on the one the round started from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedmask.wire.records import CONFIG, MAX_EXAMPLES, ReplyError

CLASS_BIASES = ("auto", "federated", "none")
CLASS_BIAS_REPORTS = ("train", "voted")  # where the statistics are taken (see above)
CLASS_BIAS, CLASS_BIAS_LAYER = "class-bias", "class-bias-layer"
CLASS_STATS = "class-stats"
CLASS_IDS, CLASS_COUNTS, CLASS_PROBS = "class-ids", "class-counts", "class-probs"
PROB_UNITS = 65535  # a probability's unit on the wire: 1/65535


@dataclass(frozen=True)
class ClassStats:
    """One client's class statistics: ids (k), counts (k) and the mean softmax
    (k x C) in integer units of 1/65535 (so that sums over replies are exact, in
    any order)."""

    ids: np.ndarray
    counts: np.ndarray
    units: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, counts: np.ndarray, probs: np.ndarray) -> ClassStats:
        """The statistics of mean softmax rows `probs`, rounded to 1/65535."""
        units = np.rint(probs.astype(np.float64) * PROB_UNITS).astype(np.int64)
        return cls(ids.astype(np.int64), counts.astype(np.int64), units)

    def record(self) -> MetricRecord:
        """The ``class-stats`` MetricRecord."""
        return MetricRecord({CLASS_IDS: [int(v) for v in self.ids],
                             CLASS_COUNTS: [int(v) for v in self.counts],
                             CLASS_PROBS: [int(v) for v in self.units.ravel()]})


def split_offset(state: ArrayRecord, config: ConfigRecord) -> tuple[ArrayRecord, ConfigRecord]:
    """The server's state record without its ``class-bias`` Array, and `config` with
    the offsets as a list of floats (exact for float32) where the state has them."""
    if CLASS_BIAS not in state:
        return state, config
    config[CLASS_BIAS] = [float(v) for v in state[CLASS_BIAS].numpy()]
    return ArrayRecord({k: v for k, v in state.items() if k != CLASS_BIAS}), config


def offset_of(msg: Message) -> tuple[str, np.ndarray | None] | None:
    """The output layer's name and the offsets b a message (or model file) carries
    (None: not yet, all 0); None when its method runs without the offsets.
    ValueError naming the key where either is malformed."""
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    if CLASS_BIAS_LAYER not in config:
        return None
    layer, bias = config[CLASS_BIAS_LAYER], config.get(CLASS_BIAS)
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"{CONFIG}/{CLASS_BIAS_LAYER}: expected a module name, got {layer!r}")
    if bias is None:
        return layer, None
    if not isinstance(bias, list) or not bias or not all(
            isinstance(v, float) and np.isfinite(v) for v in bias):
        raise ValueError(f"{CONFIG}/{CLASS_BIAS}: expected a non-empty list of finite "
                         f"floats, got {bias!r}")
    return layer, np.asarray(bias, dtype=np.float32)


def _ints(record: MetricRecord, key: str, size: int | None = None) -> np.ndarray:
    """``record[key]`` as int64, checked to be a non-empty list of ints (of `size`)."""
    value = record.get(key)
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ReplyError(f"{CLASS_STATS}/{key}", "expected a non-empty list of ints")
    if size is not None and len(value) != size:
        raise ReplyError(f"{CLASS_STATS}/{key}", f"expected {size} values, got {len(value)}")
    return np.asarray(value, dtype=np.int64)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ReplyError(f"{CLASS_STATS}/{key}", message)


def decode_stats(msg: Message, num_classes: int) -> ClassStats | None:
    """The class statistics of a train reply (None when it carries none); raise
    ReplyError naming the field that is malformed."""
    if CLASS_STATS not in msg.content.metric_records:
        return None
    record = msg.content.metric_records[CLASS_STATS]
    ids = _ints(record, CLASS_IDS)
    counts = _ints(record, CLASS_COUNTS, ids.size)
    units = _ints(record, CLASS_PROBS, ids.size * num_classes).reshape(ids.size, num_classes)
    _check(bool(((ids >= 0) & (ids < num_classes)).all()) and np.unique(ids).size == ids.size,
           CLASS_IDS, f"must be distinct classes in [0, {num_classes})")
    _check(bool((counts >= 1).all() & (counts <= MAX_EXAMPLES).all()), CLASS_COUNTS,
           f"must be in [1, {MAX_EXAMPLES}]")
    _check(bool(((units >= 0) & (units <= PROB_UNITS)).all()
                and (np.abs(units.sum(axis=1) - PROB_UNITS) <= num_classes).all()),
           CLASS_PROBS, f"each row must be probabilities in units of 1/{PROB_UNITS} summing "
                        "to 1")
    return ClassStats(ids, counts, units)
