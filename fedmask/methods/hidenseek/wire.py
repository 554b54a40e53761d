"""HideNseek wire contract.

Down (train and evaluate): ``masks`` ArrayRecord with ``prune-mask`` (N bits,
packed) and, from round 2, ``sign-mask`` (the global sign of the K kept
weights, packed; absent means all +1) and, in train messages of the ``share``
vote, ``sign-margin`` (K uint8 codes of the vote margin ``|2p - 1|``);
``config`` carries the seeded-net description, ``num-params`` N, ``num-kept`` K
and the local settings. With ``class-bias = "federated"`` the record also
carries ``class-bias`` from round 2 and replies a ``class-stats`` record
(:mod:`fedmask.wire.class_bias`). What a node already holds is not sent again
(:mod:`fedmask.wire.held`): ``prune-mask`` goes to a node once, ``sign-mask`` as
``sign-mask-flips`` against the signs it holds; the client rebuilds the full
record before anything here reads it.
Up (train): ``signs`` ArrayRecord and the ``metrics`` MetricRecord with
``num-examples``. With ``mask-coding = "packed"`` the record holds
``sign-mask`` (the client's K sign bits, packed); with ``"entropy"`` it holds
``sign-flips``: the K bits "differs from the global sign", range-coded as
i.i.d. bits (:mod:`fedmask.wire.entropy`), which is short once the global mask
has settled.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from torch import nn

from fedmask.nn.pruning import flat_weights, unit_bins
from fedmask.nn.supermask import SignSupermask
from fedmask.wire.bits import pack_mask, unpack_mask
from fedmask.wire.class_bias import CLASS_BIAS
from fedmask.wire.coding import decode_mask, decode_packed, encode_mask
from fedmask.wire.entropy import Groups
from fedmask.wire.held import Context
from fedmask.wire.records import (
    NUM_PARAMS,
    ReplyError,
    array,
    attach_flat,
    config_value,
    read_flat,
    reply_array,
)

MASKS, SIGNS = "masks", "signs"
PRUNE_MASK, SIGN_MASK, SIGN_FLIPS = "prune-mask", "sign-mask", "sign-flips"
SIGN_MARGIN = "sign-margin"
VOTES = ("majority", "share")
_MARGIN_LEVELS = 255
UPLINK_KEYS = {"packed": SIGN_MASK, "entropy": SIGN_FLIPS}
NUM_KEPT = "num-kept"
CODED = "-coded"  # key suffix of a range-coded mask (model files, where smaller than packed)


def margin_codes(share: np.ndarray) -> np.ndarray:
    """The vote margins ``|2p - 1|`` of the shares `share` as uint8 codes 0..255."""
    return np.rint(np.abs(2 * share - 1) * _MARGIN_LEVELS).astype(np.uint8)


def margins(codes: np.ndarray) -> np.ndarray:
    """Score magnitudes (fractions of |w|) of margin `codes`: ``code / 255``, a tie
    (code 0) as half a level, so that the score keeps the global sign."""
    return np.maximum(codes.astype(np.float32), 0.5) / _MARGIN_LEVELS


def encode_masks(prune: np.ndarray, signs: np.ndarray | None, compact: bool = False,
                 margin: np.ndarray | None = None, class_bias: np.ndarray | None = None
                 ) -> ArrayRecord:
    """The ``masks`` record: the prune mask and (unless None) the signs, packed, the
    `margin` codes and the per-class offsets `class_bias` if given; with `compact`
    (model files) each mask is range coded as i.i.d. bits instead, under the key +
    ``-coded``, where that is smaller."""
    bits = {PRUNE_MASK: prune} if signs is None else {PRUNE_MASK: prune, SIGN_MASK: signs}
    record = ArrayRecord()
    for key, mask in bits.items():
        packed = pack_mask(mask)
        coded = encode_mask(mask, "entropy") if compact else packed
        smaller = compact and coded.size < packed.size
        record[key + CODED if smaller else key] = Array(coded if smaller else packed)
    if margin is not None:
        record[SIGN_MARGIN] = Array(margin)
    if class_bias is not None:
        record[CLASS_BIAS] = Array(class_bias.astype(np.float32))
    return record


def decode_class_bias(record: ArrayRecord) -> np.ndarray | None:
    """The per-class offsets of a ``masks`` record (None when it carries none)."""
    return record[CLASS_BIAS].numpy() if CLASS_BIAS in record else None


def _read_bits(record: ArrayRecord, key: str, length: int) -> np.ndarray:
    """The `length` bits of `key`, packed or (model files) range coded."""
    if key + CODED in record:
        return decode_mask(array(record, key + CODED), length, "entropy", field=key + CODED)
    return unpack_mask(array(record, key), length, key)


def decode_margin(record: ArrayRecord, num_kept: int) -> np.ndarray | None:
    """The K score magnitudes of the record's ``sign-margin`` (None when absent)."""
    if SIGN_MARGIN not in record:
        return None
    codes = array(record, SIGN_MARGIN)
    if codes.dtype != np.uint8 or codes.shape != (num_kept,):
        raise ReplyError(SIGN_MARGIN, f"expected {num_kept} uint8 codes, got "
                                      f"{codes.dtype} {codes.shape}")
    return margins(codes)


def decode_masks(record: ArrayRecord, config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Unpack (prune mask of N bits, signs of K bits; all +1 when absent)."""
    num_params = config_value(config, NUM_PARAMS, int)
    num_kept = config_value(config, NUM_KEPT, int)
    prune = _read_bits(record, PRUNE_MASK, num_params)
    if int(prune.sum()) != num_kept:
        raise ReplyError(PRUNE_MASK, f"keeps {int(prune.sum())} weights, expected {num_kept}")
    if SIGN_MASK not in record and SIGN_MASK + CODED not in record:
        return prune, np.ones(num_kept, dtype=bool)
    return prune, _read_bits(record, SIGN_MASK, num_kept)


def encode_signs(signs: np.ndarray, global_signs: np.ndarray, coding: str
                 ) -> dict[str, ArrayRecord]:
    """The uplink arrays: the K sign bits packed, or their flips entropy coded."""
    bits = signs if coding == "packed" else signs != global_signs
    return {SIGNS: ArrayRecord({UPLINK_KEYS[coding]: Array(encode_mask(bits, coding))})}


def decode_signs(msg: Message, global_signs: np.ndarray, coding: str) -> np.ndarray:
    """A client's K sign bits from its reply, packed; raise ReplyError/CodecError."""
    key = UPLINK_KEYS[coding]
    packed = decode_packed(reply_array(msg, SIGNS, key), global_signs.size, coding, field=key)
    return packed if coding == "packed" else np.bitwise_xor(packed, pack_mask(global_signs))


def downlink_context(model: nn.Module) -> Context:
    """The lean downlink's coding context of P and g (:mod:`fedmask.wire.held`):
    each seeded weight's output unit (SynFlow keeps a unit's large weights or
    none) and ``|w|`` quantile within its layer; for g, read at the kept
    positions, the unit split by the sign of w (a unit's signs flip together)."""
    units, bins = unit_bins(model)
    positive = flat_weights(model) > 0

    def context(key: str, arrays: dict[str, np.ndarray]) -> Groups | None:
        if key == PRUNE_MASK:
            return Groups(units, bins)
        if key == SIGN_MASK:
            kept = unpack_mask(arrays[PRUNE_MASK], bins.size, PRUNE_MASK)
            return Groups((2 * units + positive)[kept], bins[kept])
        return None
    return context


def sign_net(model: nn.Module, prune: np.ndarray, signs: np.ndarray,
             margin: np.ndarray | None = None, lr_ratio: float = 1.0) -> nn.Module:
    """Attach sign supermasks ``w * P * sign(s)`` to the seeded `model` (in place).

    Scores start at ``|w| * g``: `signs` (K bits) give g on the kept positions;
    `margin` (K magnitudes, see :func:`decode_margin`) scales them; `lr_ratio`:
    see :class:`~fedmask.nn.supermask.SignSupermask`.
    """
    full = np.ones(prune.size, dtype=np.float32)
    full[prune] = np.where(signs, 1.0, -1.0) * (1.0 if margin is None else margin)
    model.requires_grad_(False)  # only the scores train
    return attach_flat(model, lambda w, p, s: SignSupermask(w, p, s, lr_ratio), prune, full)


def read_signs(model: nn.Module, prune: np.ndarray) -> np.ndarray:
    """The current sign bits (True = +1) of the K kept positions of `model`."""
    return read_flat(model, SignSupermask.signs)[prune]
