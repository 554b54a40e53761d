"""SSFL wire contract (training rounds are masked FedAvg: :mod:`fedmask.methods.masked.wire`).

Saliency round (before round 1, a ``query`` message to every connected node).
Down: ``config`` with the keys of the masked contract (the seeded-net
description, ``num-params`` N, the all-ones mask's ``num-kept`` and digest),
``saliency-batches`` and ``saliency-format``; with ``init="model"`` also the
``weights`` ArrayRecord: the model's own ``w0`` (kept values under the all-ones
``mask``, which is sent too). Up: ``saliency`` ArrayRecord with
``snip`` (``|g * w|`` of the N prunable weights, float16 or float32) and the
``metrics`` MetricRecord with ``num-examples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedmask.wire.bits import CodecError
from fedmask.wire.records import reply_array

SALIENCY, SNIP = "saliency", "snip"
SALIENCY_BATCHES, SALIENCY_FORMAT = "saliency-batches", "saliency-format"
SALIENCY_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype(np.float16),
                                             "float32": np.dtype(np.float32)}


def encode_saliency(scores: np.ndarray, saliency_format: str) -> dict[str, ArrayRecord]:
    """The uplink: the saliency in `saliency_format` (float16 saturates at 65504)."""
    dtype = SALIENCY_DTYPES[saliency_format]
    values = np.minimum(scores, np.finfo(dtype).max).astype(dtype)
    return {SALIENCY: ArrayRecord({SNIP: Array(values)})}


def decode_saliency(msg: Message, num_params: int, saliency_format: str) -> np.ndarray:
    """A client's saliency as float64; checks size, dtype, finite and >= 0."""
    values = reply_array(msg, SALIENCY, SNIP)
    dtype = SALIENCY_DTYPES[saliency_format]
    if values.dtype != dtype or values.shape != (num_params,):
        raise CodecError(SNIP, f"expected {num_params} values of {dtype}, got "
                               f"{values.shape} of {values.dtype}")
    values = values.astype(np.float64)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise CodecError(SNIP, "saliency must be finite and >= 0")
    return values
