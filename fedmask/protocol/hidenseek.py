"""HideNseek wire contract.

Down (train and evaluate): ``masks`` ArrayRecord with ``prune-mask`` (N bits,
packed) and, from round 2, ``sign-mask`` (the global sign of the K kept
weights, packed; absent means all +1); ``config`` carries the seeded-net
description, ``num-params`` N, ``num-kept`` K and the local settings.
Up (train): ``signs`` ArrayRecord with ``sign-mask`` (K bits, packed) and the
``metrics`` MetricRecord with ``num-examples``.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from torch import nn

from fedmask.codec import flatten_masks, pack_mask, split_flat, unpack_mask
from fedmask.masking import SignSupermask, attach, supermasks
from fedmask.protocol import ReplyError
from fedmask.pruning import prunable_names

MASKS, SIGNS = "masks", "signs"
PRUNE_MASK, SIGN_MASK = "prune-mask", "sign-mask"
NUM_PARAMS, NUM_KEPT = "num-params", "num-kept"


def _array(record: ArrayRecord, key: str) -> np.ndarray:
    if key not in record:
        raise ReplyError(key, "missing")
    return record[key].numpy()


def encode_masks(prune: np.ndarray, signs: np.ndarray | None) -> ArrayRecord:
    """The ``masks`` record: packed prune mask and (unless None) packed signs."""
    record = ArrayRecord({PRUNE_MASK: Array(pack_mask(prune))})
    if signs is not None:
        record[SIGN_MASK] = Array(pack_mask(signs))
    return record


def decode_masks(record: ArrayRecord, config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Unpack (prune mask of N bits, signs of K bits; all +1 when absent)."""
    num_params, num_kept = int(config[NUM_PARAMS]), int(config[NUM_KEPT])
    prune = unpack_mask(_array(record, PRUNE_MASK), num_params, PRUNE_MASK)
    if int(prune.sum()) != num_kept:
        raise ReplyError(PRUNE_MASK, f"keeps {int(prune.sum())} weights, expected {num_kept}")
    if SIGN_MASK not in record:
        return prune, np.ones(num_kept, dtype=bool)
    return prune, unpack_mask(_array(record, SIGN_MASK), num_kept, SIGN_MASK)


def encode_signs(signs: np.ndarray) -> dict[str, ArrayRecord]:
    """The uplink arrays: the client's K sign bits, packed."""
    return {SIGNS: ArrayRecord({SIGN_MASK: Array(pack_mask(signs))})}


def decode_signs(msg: Message, num_kept: int) -> np.ndarray:
    """Unpack and validate a client's K sign bits; raise ReplyError/CodecError."""
    if SIGNS not in msg.content.array_records:
        raise ReplyError(SIGNS, "missing ArrayRecord")
    return unpack_mask(_array(msg.content.array_records[SIGNS], SIGN_MASK), num_kept, SIGN_MASK)


def sign_net(model: nn.Module, prune: np.ndarray, signs: np.ndarray) -> nn.Module:
    """Attach sign supermasks ``w * P * sign(s)`` to the seeded `model` (in place).

    Scores start at ``|w| * g``: `signs` (K bits) give g on the kept positions.
    """
    names = prunable_names(model)
    params = dict(model.named_parameters())
    shapes = {name: tuple(params[name].shape) for name in names}
    full = np.ones(prune.size, dtype=np.float32)
    full[prune] = np.where(signs, 1.0, -1.0)
    prune_t, sign_t = split_flat(prune, shapes), split_flat(full, shapes)
    attach(model, lambda name, w: SignSupermask(w, prune_t[name], sign_t[name]), names)
    return model


@torch.no_grad()
def read_signs(model: nn.Module, prune: np.ndarray) -> np.ndarray:
    """The current sign bits (True = +1) of the K kept positions of `model`."""
    masks = supermasks(model)
    return flatten_masks({n: m.signs() for n, m in masks.items()}, list(masks))[prune]
