"""Entropy coding of binary masks with constriction's range coder.

A mask is coded against per-position keep probabilities that both sides hold
(:func:`encode` with `probs`), or as i.i.d. bits whose ones-count travels in
the header (`probs=None`). The payload is one ``uint8`` array::

    digest (8 B, BLAKE2b of the packed mask) | [ones-count (4 B, iid only)] | stream

The decoder recomputes the digest, so a corrupted or truncated stream raises
:class:`~fedmask.wire.bits.CodecError` instead of yielding a wrong mask.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import constriction
import numpy as np

from fedmask.wire.bits import CodecError, pack_mask

DIGEST_BYTES = 8
_COUNT = np.dtype("<u4")
_WORD = np.dtype("<u4")
_LOG_EPS = np.float32(1e-7)  # float32 code lengths: probabilities kept off 0 and 1


def _digest(bits: np.ndarray) -> np.ndarray:
    """BLAKE2b digest of the packed mask, as uint8."""
    digest = hashlib.blake2b(pack_mask(bits).tobytes(), digest_size=DIGEST_BYTES).digest()
    return np.frombuffer(digest, dtype=np.uint8)


def _model_probs(probs: np.ndarray | None, length: int, count: int) -> np.ndarray:
    """Per-position probabilities of a 1: `probs`, or ``(count + 1/2) / (length + 1)``."""
    if probs is None:
        return np.full(length, (count + 0.5) / (length + 1), dtype=np.float64)
    return np.asarray(probs, dtype=np.float64).reshape(-1)


def _check_probs(probs: np.ndarray, length: int, field: str) -> None:
    if probs.size != length:
        raise CodecError(field, f"expected {length} probabilities, got {probs.size}")
    if not np.all((probs >= 0.0) & (probs <= 1.0)):
        raise CodecError(field, "probabilities must lie in [0, 1]")


def _bernoulli() -> constriction.stream.model.Bernoulli:
    return constriction.stream.model.Bernoulli(perfect=False)


def encode(bits: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Range-code the boolean mask `bits` against `probs` (or i.i.d. when None).

    Returns the payload as a 1-D ``uint8`` array (see the module docstring).
    """
    bits = np.asarray(bits).reshape(-1)
    if bits.dtype != np.bool_:
        raise CodecError("mask", f"expected dtype bool, got {bits.dtype}")
    count = int(bits.sum())
    model = _model_probs(probs, bits.size, count)
    _check_probs(model, bits.size, "probs")
    header = [_digest(bits)]
    if probs is None:
        header.append(np.array([count], dtype=_COUNT).view(np.uint8))
    encoder = constriction.stream.queue.RangeEncoder()
    if bits.size:
        encoder.encode(bits.astype(np.int32), _bernoulli(), model)
    stream = encoder.get_compressed().astype(_WORD).view(np.uint8)
    return np.concatenate([*header, stream])


def _split(payload: np.ndarray, iid: bool, field: str) -> tuple[np.ndarray, int, np.ndarray]:
    """(digest, ones-count or -1, stream words) of a validated payload."""
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 or payload.ndim != 1:
        raise CodecError(field, "expected a 1-D uint8 array")
    head = DIGEST_BYTES + (_COUNT.itemsize if iid else 0)
    if payload.size < head or (payload.size - head) % _WORD.itemsize:
        raise CodecError(field, f"payload of {payload.size} bytes is truncated")
    count = int(payload[DIGEST_BYTES:head].view(_COUNT)[0]) if iid else -1
    return payload[:DIGEST_BYTES], count, payload[head:].copy().view(_WORD)


def decode(payload: np.ndarray, length: int, probs: np.ndarray | None = None,
           field: str = "mask") -> np.ndarray:
    """Decode a payload of :func:`encode` into `length` bits; raise CodecError.

    `probs` must be the very probabilities the encoder used (None for i.i.d.).
    """
    digest, count, words = _split(payload, probs is None, field)
    if probs is None and not 0 <= count <= length:
        raise CodecError(field, f"ones-count {count} exceeds the length {length}")
    model = _model_probs(probs, length, count)
    _check_probs(model, length, field)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        bits = decoder.decode(_bernoulli(), model).astype(bool) if length else np.zeros(0, bool)
    except (AssertionError, ValueError, RuntimeError) as err:
        raise CodecError(field, f"invalid range-coded stream ({err})") from None
    if not np.array_equal(_digest(bits), digest):
        raise CodecError(field, "decoded mask does not match its digest (corrupted stream)")
    return bits


def information_bits(bits: np.ndarray, probs: np.ndarray | None = None) -> float:
    """Ideal code length of `bits` in bits: ``-sum log2 P(bit)`` under the coder's model."""
    return CodeLength(probs)(bits)


class CodeLength:
    """Ideal code lengths ``-sum log2 P(bit)`` of masks under one model: per-position
    probabilities of a 1, or i.i.d. (None: the mask's own share of ones). The
    model's logarithms are taken once (in float32, probabilities kept within
    [1e-7, 1 - 1e-7]); each mask then costs one dot product."""

    def __init__(self, probs: np.ndarray | None) -> None:
        self.probs = probs
        if probs is not None:
            model = np.asarray(probs, dtype=np.float32).reshape(-1)
            model = np.clip(model, _LOG_EPS, 1 - _LOG_EPS)
            self.per_one = np.log2(1 - model)  # every bit 0, then what a 1 adds
            self.all_zeros = -float(self.per_one.sum(dtype=np.float64))
            self.per_one -= np.log2(model)

    def __call__(self, bits: np.ndarray) -> float:
        bits = np.asarray(bits, dtype=bool).reshape(-1)
        ones = int(np.count_nonzero(bits))
        if self.probs is None:  # one probability for all: a closed form
            p = min(max((ones + 0.5) / (bits.size + 1), 1e-12), 1 - 1e-12)
            return float(-ones * np.log2(p) - (bits.size - ones) * np.log2(1 - p))
        return self.all_zeros + float(np.dot(bits.view(np.uint8).astype(np.float32),
                                             self.per_one))


def binary_entropy(p: float | np.ndarray) -> float | np.ndarray:
    """``H(p)`` in bits (0 at p = 0 or 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0)
    q = np.clip(1.0 - np.asarray(p), 1e-300, 1.0)
    out = -(p * np.log2(p) + q * np.log2(q))
    return float(out) if out.ndim == 0 else out


def _context_order(context: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions grouped by context (stable), the contexts present, their sizes."""
    order = np.argsort(context, kind="stable")
    present, sizes = np.unique(context, return_counts=True)
    return order, present, sizes


def encode_codes(codes: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Range-code the ``uint8`` symbols `codes`, each under the empirical distribution
    of the symbols sharing its `context` value (a ``uint8`` array both sides hold,
    such as the codes a node already has). Payload::

        digest (8 B) | S (2 B) | S symbols | counts (contexts x S, 2 B each) | stream

    where the contexts are those present in `context`, in increasing order (the
    symbols of a context that holds one symbol are not in the stream).
    """
    if codes.dtype != np.uint8 or context.dtype != np.uint8 or codes.shape != context.shape:
        raise CodecError("codes", "codes and context must be uint8 arrays of one shape")
    order, present, _ = _context_order(context)
    symbols, index = np.unique(codes, return_inverse=True)
    table = np.zeros((present.size, symbols.size), dtype=np.int64)
    np.add.at(table, (np.searchsorted(present, context), index), 1)
    counts = _quantise_counts(table)
    encoder = constriction.stream.queue.RangeEncoder()
    grouped = index.astype(np.int32)[order]
    start = 0
    for row, size in zip(counts, table.sum(axis=1)):
        if np.count_nonzero(row) > 1:  # a context with one symbol costs nothing
            encoder.encode(grouped[start:start + size], _categorical(row))
        start += size
    stream = encoder.get_compressed().astype(_WORD).view(np.uint8)
    return np.concatenate([_digest_bytes(codes), np.array([symbols.size], "<u2").view(np.uint8),
                           symbols.astype(np.uint8), counts.astype("<u2").view(np.uint8).ravel(),
                           stream])


def decode_codes(payload: np.ndarray, context: np.ndarray, field: str = "codes") -> np.ndarray:
    """Inverse of :func:`encode_codes` given the same `context`; raise CodecError."""
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 or payload.ndim != 1:
        raise CodecError(field, "expected a 1-D uint8 array")
    order, present, sizes = _context_order(context)
    head = DIGEST_BYTES + 2
    if payload.size < head:
        raise CodecError(field, f"payload of {payload.size} bytes is truncated")
    num_symbols = int(payload[DIGEST_BYTES:head].view("<u2")[0])
    table_end = head + num_symbols + 2 * num_symbols * present.size
    if num_symbols == 0 or payload.size < table_end or (payload.size - table_end) % _WORD.itemsize:
        raise CodecError(field, f"payload of {payload.size} bytes is truncated")
    symbols = payload[head:head + num_symbols]
    counts = payload[head + num_symbols:table_end].copy().view("<u2").reshape(present.size, -1)
    grouped = np.empty(context.size, dtype=np.int32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(payload[table_end:].copy().view(_WORD))
        start = 0
        for row, size in zip(counts, sizes):
            if np.count_nonzero(row) == 1:
                grouped[start:start + size] = np.flatnonzero(row)[0]
            elif size:
                grouped[start:start + size] = decoder.decode(_categorical(row), int(size))
            start += size
    except (AssertionError, ValueError, RuntimeError) as err:
        raise CodecError(field, f"invalid range-coded stream ({err})") from None
    codes = np.empty(context.size, dtype=np.uint8)
    codes[order] = symbols[np.clip(grouped, 0, num_symbols - 1)]
    if not np.array_equal(_digest_bytes(codes), payload[:DIGEST_BYTES]):
        raise CodecError(field, "decoded codes do not match their digest (corrupted stream)")
    return codes


class Groups(NamedTuple):
    """A coding context of bits both sides hold: per position its group (integers
    0 .. G - 1, such as the output unit of a weight) and its bin (uint8 below
    :data:`BINS`, such as the weight's magnitude quantile)."""

    groups: np.ndarray
    bins: np.ndarray


BINS = CLASSES = 16  # bins of a Groups context; levels of a group's share of ones


def _group_classes(bits: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Each group's share of ones, ``(ones + 1/2) / (n + 1)``, in CLASSES levels."""
    ones = np.bincount(groups, weights=bits, minlength=count)
    sizes = np.bincount(groups, minlength=count)
    share = (ones + 0.5) / (sizes + 1)
    return np.minimum(share * CLASSES, CLASSES - 1).astype(np.uint8)


def _grouped_contexts(classes: np.ndarray, context: Groups) -> tuple[np.ndarray, int]:
    """Each position's index among the (class, bin) contexts present, and their count."""
    if context.bins.dtype != np.uint8 or (context.bins.size and context.bins.max() >= BINS):
        raise CodecError("context", f"bins must be uint8 below {BINS}")
    codes = classes[context.groups] * np.uint8(BINS) + context.bins  # < 256
    present = np.bincount(codes, minlength=CLASSES * BINS) > 0
    return (np.cumsum(present) - 1)[codes], int(present.sum())


def encode_grouped(bits: np.ndarray, context: Groups) -> np.ndarray:
    """Range-code the 0/1 ``uint8`` `bits` under the share of ones of their (class,
    bin), the class being the share of ones in the bit's group. Payload::

        classes (4 bits per group) | shares (1 B per (class, bin) present) | encode payload

    where a share ``s`` stands for the probability ``s / 256`` of a one."""
    count = int(context.groups.max()) + 1 if context.groups.size else 0
    classes = _group_classes(bits, context.groups, count)
    paired = np.resize(classes, 2 * ((count + 1) // 2)) if count else classes
    index, present = _grouped_contexts(classes, context)
    ones = np.bincount(index, weights=bits, minlength=present)
    shares = np.clip(np.rint(256 * ones / np.bincount(index, minlength=present)), 1, 255)
    return np.concatenate([((paired[0::2] << 4) | paired[1::2]).astype(np.uint8),
                           shares.astype(np.uint8),
                           encode(bits.view(bool), shares[index] / 256)])


def decode_grouped(payload: np.ndarray, context: Groups, field: str = "bits") -> np.ndarray:
    """Inverse of :func:`encode_grouped` given the same `context` (0/1 ``uint8``);
    raise CodecError."""
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 or payload.ndim != 1:
        raise CodecError(field, "expected a 1-D uint8 array")
    count = int(context.groups.max()) + 1 if context.groups.size else 0
    head = (count + 1) // 2
    if payload.size < head:
        raise CodecError(field, f"payload of {payload.size} bytes is truncated")
    classes = np.stack([payload[:head] >> 4, payload[:head] & 15], axis=1).reshape(-1)
    index, present = _grouped_contexts(classes, context)
    if payload.size < head + present:
        raise CodecError(field, f"payload of {payload.size} bytes is truncated")
    shares = payload[head:head + present].astype(np.float64)
    bits = decode(payload[head + present:], context.bins.size, shares[index] / 256, field)
    return bits.view(np.uint8)


def _quantise_counts(table: np.ndarray) -> np.ndarray:
    """Per-context symbol counts scaled to at most 65535, a present symbol kept >= 1."""
    scale = np.maximum(table.max(axis=1, keepdims=True), 1) / 65535
    scaled = np.where(table > 0, np.maximum(np.floor(table / np.maximum(scale, 1)), 1), 0)
    return scaled.astype(np.int64)


def _categorical(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """A fixed categorical model with probabilities proportional to `counts` (every
    symbol keeps a tiny probability, so no stream is undecodable)."""
    probs = counts.astype(np.float64) + 1e-9
    return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)


def _digest_bytes(codes: np.ndarray) -> np.ndarray:
    digest = hashlib.blake2b(codes.tobytes(), digest_size=DIGEST_BYTES).digest()
    return np.frombuffer(digest, dtype=np.uint8)
