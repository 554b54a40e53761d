"""FedPM wire contract.

Down (train and evaluate): ``theta`` ArrayRecord with ``theta``, the global
keep probability of each of the N prunable weights, as ``uint8`` codes
``q`` meaning ``(q + 1/2) / 256`` (``theta-format = "uint8"``) or as float32;
``config`` carries the seeded-net description, ``num-params`` N,
``theta-format``, ``mask-coding``, ``estimator``, ``eval-samples`` and the
local settings. A node that holds an earlier theta (it keeps the last one it was
sent in ``context.state``) gets uint8 codes as ``theta-delta``: range coded under
the distribution of the new codes among positions sharing its held code, exact
(:mod:`fedmask.wire.held`); a node that holds none gets them in full.
Up (train): ``mask`` ArrayRecord with ``sampled-mask``: one mask sampled from
the client's probabilities, N bits, packed or range-coded against the global
theta both sides hold (``mask-coding``), and the ``metrics`` MetricRecord with
``num-examples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from torch import nn

from fedmask.nn.supermask import BernoulliSupermask
from fedmask.wire.bits import pack_mask, unpack_mask
from fedmask.wire.coding import decode_packed, encode_mask
from fedmask.wire.records import (
    NUM_PARAMS,
    ReplyError,
    array,
    attach_flat,
    config_value,
    read_flat,
    reply_array,
)

THETA, MASK, SAMPLED_MASK = "theta", "mask", "sampled-mask"
THETA_FORMAT, ESTIMATOR, EVAL_SAMPLES = "theta-format", "estimator", "eval-samples"
MASK_FORMAT = "mask"  # theta-format of a model file: the thresholded mask, packed
THETA_DTYPES: dict[str, np.dtype[Any]] = {"uint8": np.dtype(np.uint8),
                                          "float32": np.dtype(np.float32)}
_LEVELS = 256


def quantise(theta: np.ndarray, theta_format: str) -> np.ndarray:
    """The on-wire form of probabilities `theta` (uint8 codes or float32)."""
    if theta_format == "float32":
        return theta.astype(np.float32)
    return np.minimum(np.floor(theta * _LEVELS), _LEVELS - 1).astype(np.uint8)


def dequantise(wire_theta: np.ndarray) -> np.ndarray:
    """Probabilities (float64) from the on-wire form: ``(q + 1/2) / 256`` for codes."""
    if wire_theta.dtype == np.uint8:
        return (wire_theta.astype(np.float64) + 0.5) / _LEVELS
    return wire_theta.astype(np.float64)


def encode_theta(wire_theta: np.ndarray) -> ArrayRecord:
    """The ``theta`` record."""
    return ArrayRecord({THETA: Array(wire_theta)})


def encode_thresholded(theta: np.ndarray) -> ArrayRecord:
    """The ``theta`` record of a model file: the mask ``theta > 0.5``, packed
    (``theta-format = "mask"``)."""
    return ArrayRecord({THETA: Array(pack_mask(theta > 0.5))})


def decode_theta(record: ArrayRecord, config: ConfigRecord) -> np.ndarray:
    """Validated probabilities (float64, N entries) from a ``theta`` record (a model
    file's packed thresholded mask reads as probabilities 0 and 1)."""
    wire_theta = array(record, THETA)
    if config_value(config, THETA_FORMAT, str) == MASK_FORMAT:
        mask = unpack_mask(wire_theta, config_value(config, NUM_PARAMS, int), THETA)
        return mask.astype(np.float64)
    expected = THETA_DTYPES.get(config_value(config, THETA_FORMAT, str))
    if wire_theta.dtype != expected or wire_theta.shape != (config_value(config, NUM_PARAMS, int),):
        raise ReplyError(THETA, f"expected {config[NUM_PARAMS]!r} values of {expected}, got "
                                f"{wire_theta.shape} of {wire_theta.dtype}")
    theta = dequantise(wire_theta)
    if not np.all((theta >= 0.0) & (theta <= 1.0)):  # also rejects NaN
        raise ReplyError(THETA, "probabilities must lie in [0, 1]")
    return theta


def encode_sample(mask: np.ndarray, theta: np.ndarray, coding: str) -> dict[str, ArrayRecord]:
    """The uplink arrays: the sampled mask, packed or coded against `theta`."""
    return {MASK: ArrayRecord({SAMPLED_MASK: Array(encode_mask(mask, coding, theta))})}


def decode_sample(msg: Message, theta: np.ndarray, coding: str) -> np.ndarray:
    """A client's sampled mask (N bits, packed); raise ReplyError/CodecError."""
    payload = reply_array(msg, MASK, SAMPLED_MASK)
    return decode_packed(payload, theta.size, coding, theta, SAMPLED_MASK)


def mask_net(model: nn.Module, theta: np.ndarray, estimator: str = "ste",
             lr_ratio: float = 1.0) -> nn.Module:
    """Attach Bernoulli supermasks with keep probabilities `theta` to `model` (in
    place); `lr_ratio`: see :class:`~fedmask.nn.supermask.BernoulliSupermask`."""
    theta32 = theta.astype(np.float32)
    model.requires_grad_(False)  # only the scores train
    return attach_flat(model, lambda w, t: BernoulliSupermask(t, estimator, lr_ratio=lr_ratio),
                       theta32)


def sample_mask(model: nn.Module) -> np.ndarray:
    """One mask (N bits) sampled from the probabilities of `model`'s supermasks."""
    return read_flat(model, BernoulliSupermask.sample)
