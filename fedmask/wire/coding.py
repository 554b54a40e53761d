"""The ``mask-coding`` option: how every mask method puts a binary mask on the wire.

``packed`` sends ``ceil(n/8)`` bytes (:func:`fedmask.wire.bits.pack_mask`);
``entropy`` range-codes the mask against a model both sides hold
(:mod:`fedmask.wire.entropy`): per-position probabilities, or i.i.d. when None.
"""

from __future__ import annotations

import numpy as np

from fedmask.wire import entropy
from fedmask.wire.bits import CodecError, check_packed, pack_mask, unpack_mask

CODINGS = ("packed", "entropy")


def check_coding(coding: str) -> None:
    """Raise CodecError (a ValueError) naming ``mask-coding`` unless `coding` is known."""
    if coding not in CODINGS:
        raise CodecError("mask-coding", f"unknown coding {coding!r}; allowed: {list(CODINGS)}")


def encode_mask(bits: np.ndarray, coding: str, probs: np.ndarray | None = None) -> np.ndarray:
    """The boolean mask `bits` as a ``uint8`` payload in `coding`."""
    check_coding(coding)
    return pack_mask(bits) if coding == "packed" else entropy.encode(bits, probs)


def decode_mask(payload: np.ndarray, length: int, coding: str,
                probs: np.ndarray | None = None, field: str = "mask") -> np.ndarray:
    """Inverse of :func:`encode_mask`: `length` bits; raise CodecError naming `field`."""
    check_coding(coding)
    if coding == "packed":
        return unpack_mask(payload, length, field)
    return entropy.decode(payload, length, probs, field)


def decode_packed(payload: np.ndarray, length: int, coding: str,
                  probs: np.ndarray | None = None, field: str = "mask") -> np.ndarray:
    """As :func:`decode_mask`, the bits packed (``ceil(length/8)`` bytes): a
    ``packed`` payload is checked and returned as it is."""
    if coding == "packed":
        return check_packed(payload, length, field)
    return pack_mask(decode_mask(payload, length, coding, probs, field))
