"""MPFL wire contract.

Every message's ``config`` carries the seeded-net description (the initial
weights ``w0`` are rebuilt from the seed), ``num-params`` N, ``phase``,
``num-kept`` (weights the consensus mask C keeps) and the local settings.

Down, both phases: the ``weights`` ArrayRecord.
Phase 1 (mask search). Down: ``weights`` holds only ``consensus-mask``
(C, N bits, packed); ``prune-rate``, ``prune-structure`` and ``mask-coding``
in the config. Up: ``vote`` ArrayRecord with ``client-mask``: the client's mask
``C_k`` (a subset of C) at the positions C keeps, packed or entropy coded as
i.i.d. bits.

Phase 2 (masked FedAvg). Down: ``weights`` in the sparse format of
:mod:`fedmask.sparse` (kept values + dense small tensors) and, for a node that
does not hold C yet, ``consensus-mask``; ``mask-digest`` in the config names C.
The node keeps C in its Flower ``context.state`` (it survives between rounds in
simulation and on SuperNodes). Up: ``weights``, sparse, against the same C.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmask.codec import pack_mask, unpack_mask
from fedmask.mask_coding import decode_mask, encode_mask
from fedmask.protocol import NUM_PARAMS, ReplyError, array

VOTE, WEIGHTS = "vote", "weights"
CONSENSUS, CLIENT_MASK = "consensus-mask", "client-mask"
PHASE, NUM_KEPT, MASK_DIGEST = "phase", "num-kept", "mask-digest"
PRUNE_RATE, PRUNE_STRUCTURE = "prune-rate", "prune-structure"
STATE_KEY = "mpfl"  # context.state ArrayRecord holding C and its digest


def mask_digest(mask: np.ndarray) -> str:
    """Short SHA-256 of the packed mask: names C in phase-2 configs."""
    return hashlib.sha256(pack_mask(mask).tobytes()).hexdigest()[:16]


def encode_consensus(mask: np.ndarray) -> ArrayRecord:
    """The phase-1 ``weights`` record: C packed."""
    return ArrayRecord({CONSENSUS: Array(pack_mask(mask))})


def decode_consensus(record: ArrayRecord, config: ConfigRecord) -> np.ndarray:
    """C from a record; checks N and the announced number of kept weights."""
    mask = unpack_mask(array(record, CONSENSUS), int(config[NUM_PARAMS]), CONSENSUS)
    if int(mask.sum()) != int(config[NUM_KEPT]):
        raise ReplyError(CONSENSUS, f"keeps {int(mask.sum())}, expected {config[NUM_KEPT]}")
    return mask


def encode_vote(client_mask: np.ndarray, consensus: np.ndarray, coding: str
                ) -> dict[str, ArrayRecord]:
    """The phase-1 uplink: `client_mask` at the positions `consensus` keeps."""
    return {VOTE: ArrayRecord({CLIENT_MASK: Array(encode_mask(client_mask[consensus], coding))})}


def decode_vote(msg: Message, consensus: np.ndarray, coding: str) -> np.ndarray:
    """A client's full mask C_k (zero outside C); raise ReplyError/CodecError."""
    if VOTE not in msg.content.array_records:
        raise ReplyError(VOTE, "missing ArrayRecord")
    payload = array(msg.content.array_records[VOTE], CLIENT_MASK)
    bits = decode_mask(payload, int(consensus.sum()), coding, field=CLIENT_MASK)
    full = np.zeros_like(consensus)
    full[consensus] = bits
    return full


def held_mask(msg: Message, state: RecordDict) -> np.ndarray:
    """C for a phase-2 message: from the message (then kept in `state`) or from
    `state`; its digest must equal the config's ``mask-digest``."""
    config = msg.content.config_records["config"]
    record = msg.content.array_records[WEIGHTS]
    if CONSENSUS in record:
        mask = decode_consensus(record, config)
        state[STATE_KEY] = ArrayRecord({CONSENSUS: Array(pack_mask(mask))})
    elif STATE_KEY in state.array_records:
        mask = unpack_mask(state.array_records[STATE_KEY][CONSENSUS].numpy(),
                           int(config[NUM_PARAMS]), CONSENSUS)
    else:
        raise ReplyError(CONSENSUS, "this node does not hold the consensus mask")
    if mask_digest(mask) != str(config[MASK_DIGEST]):
        raise ReplyError(MASK_DIGEST, "the held consensus mask is not the server's")
    return mask
