"""Wire contract of masked FedAvg (MPFL's phase 2, SSFL): weights under a fixed mask.

Every message's ``config`` carries the seeded-net description (the initial
weights ``w0`` are rebuilt from the seed), ``num-params`` N, ``phase``,
``num-kept`` (weights the mask keeps), ``mask-digest`` and the local settings.
Down: the ``weights`` ArrayRecord in the sparse format of :mod:`fedmask.wire.sparse`
(kept values + dense small tensors) and, for a node that does not hold the mask
yet, ``mask`` (N bits, packed). The node keeps the mask in its Flower
``context.state`` (it survives between rounds in simulation and on SuperNodes)
and checks it against ``mask-digest``. Up: ``weights``, sparse, against the same
mask. A node without the mask refuses the round and the server sends it again.
A method whose clients prune (MPFL's votes, local FedSparsify) adds the
``client-mask`` ArrayRecord: the client's mask (a subset of the global one) at
the positions the global mask keeps, coded as ``mask-coding`` says.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from torch import Tensor

from fedmask.wire.bits import pack_mask, unpack_mask
from fedmask.wire.coding import decode_mask, encode_mask
from fedmask.wire.records import CONFIG, NUM_PARAMS, ReplyError, array, config_value, reply_array
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse

WEIGHTS, MASK, CLIENT_MASK = "weights", "mask", "client-mask"
PHASE, NUM_KEPT, MASK_DIGEST = "phase", "num-kept", "mask-digest"
STATE_KEY = "masked-fedavg"  # context.state ArrayRecord holding the mask
VALUE_FORMAT = "value-format"  # config: precision of the kept values (model files: float16)
VALUE_FORMATS = ("float32", "float16")


def mask_digest(mask: np.ndarray) -> str:
    """Short SHA-256 of the packed mask: names it in every config."""
    return hashlib.sha256(pack_mask(mask).tobytes()).hexdigest()[:16]


def mask_array(mask: np.ndarray) -> Array:
    """The mask as an Array (packed)."""
    return Array(pack_mask(mask))


def decode_mask_record(record: ArrayRecord, config: ConfigRecord) -> np.ndarray:
    """The mask a record carries; checks N and the announced number kept."""
    mask = unpack_mask(array(record, MASK), config_value(config, NUM_PARAMS, int), MASK)
    if int(mask.sum()) != config_value(config, NUM_KEPT, int):
        raise ReplyError(MASK, f"keeps {int(mask.sum())}, expected {config[NUM_KEPT]!r}")
    return mask


def value_format(config: ConfigRecord) -> str:
    """The precision the kept values travel in (``value-format``; float32 when absent)."""
    value = str(config.get(VALUE_FORMAT, "float32"))
    if value not in VALUE_FORMATS:
        raise ReplyError(VALUE_FORMAT, f"{value!r} is not one of {list(VALUE_FORMATS)}")
    return value


def with_float32_values(record: ArrayRecord, values_format: str) -> ArrayRecord:
    """`record` with its kept values as float32 when they travel as float16 (the
    ``value-format`` option, or a model file's); unchanged otherwise."""
    if values_format != "float16" or KEPT_VALUES not in record:
        return record
    values = array(record, KEPT_VALUES)
    if values.dtype != np.float16:
        raise ReplyError(KEPT_VALUES, f"expected float16, got {values.dtype}")
    return ArrayRecord({**dict(record), KEPT_VALUES: Array(values.astype(np.float32))})


def held_mask(msg: Message, state: RecordDict) -> np.ndarray:
    """The mask for a message: from the message (then kept in `state`) or from
    `state`; its digest must equal the config's ``mask-digest``."""
    config = msg.content.config_records[CONFIG]
    record = msg.content.array_records[WEIGHTS]
    if MASK in record:
        mask = decode_mask_record(record, config)
        state[STATE_KEY] = ArrayRecord({MASK: mask_array(mask)})
    elif STATE_KEY in state.array_records:
        mask = unpack_mask(state.array_records[STATE_KEY][MASK].numpy(),
                           config_value(config, NUM_PARAMS, int), MASK)
    else:
        raise ReplyError(MASK, "this node does not hold the mask")
    if mask_digest(mask) != config_value(config, MASK_DIGEST, str):
        raise ReplyError(MASK_DIGEST, "the held mask is not the server's")
    return mask


def decode_weights(msg: Message, mask: np.ndarray, reference: dict[str, Tensor],
                   names: list[str], values_format: str = "float32") -> dict[str, Tensor]:
    """A reply's ``weights`` under `mask` as a state dict like `reference`; the record
    must hold exactly the kept values (as `values_format`) and the dense tensors.
    Raise ReplyError/CodecError."""
    if WEIGHTS not in msg.content.array_records:
        raise ReplyError(WEIGHTS, "missing ArrayRecord")
    record = msg.content.array_records[WEIGHTS]
    unknown = sorted(set(record) - {KEPT_VALUES, *(set(reference) - set(names))})
    if unknown:
        raise ReplyError(WEIGHTS, f"unexpected arrays {unknown}")
    return decode_sparse(with_float32_values(record, values_format), mask, reference, names)


def encode_client_mask(client_mask: np.ndarray, mask: np.ndarray, coding: str
                       ) -> dict[str, ArrayRecord]:
    """The ``client-mask`` record: `client_mask` at the positions `mask` keeps."""
    payload = Array(encode_mask(client_mask[mask], coding))
    return {CLIENT_MASK: ArrayRecord({CLIENT_MASK: payload})}


def decode_client_mask(msg: Message, mask: np.ndarray, coding: str) -> np.ndarray:
    """A client's full mask (False outside `mask`); raise ReplyError/CodecError."""
    payload = reply_array(msg, CLIENT_MASK, CLIENT_MASK)
    bits = decode_mask(payload, int(mask.sum()), coding, field=CLIENT_MASK)
    full = np.zeros_like(mask)
    full[mask] = bits
    return full
