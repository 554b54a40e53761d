"""MPFL wire contract (phase 2 is masked FedAvg: :mod:`fedmask.protocol.masked`).

Phase 1 (mask search). Down: the ``weights`` ArrayRecord holds only ``mask``
(the consensus C, N bits, packed); the config adds ``prune-rate``,
``prune-structure`` and ``mask-coding`` to the keys of the masked contract.
Up: ``vote`` ArrayRecord with ``client-mask``: the client's mask ``C_k`` (a
subset of C) at the positions C keeps, packed or entropy coded as i.i.d. bits.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedmask.mask_coding import decode_mask, encode_mask
from fedmask.protocol import ReplyError, array

VOTE, CLIENT_MASK = "vote", "client-mask"
PRUNE_RATE, PRUNE_STRUCTURE = "prune-rate", "prune-structure"


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
