"""Weighted per-position sums of many binary masks, sixteen masks per pass.

``sum_k w_k m_k`` over K masks of N bits costs, one mask at a time, K passes of
a multiply and an add over an N-long array. :class:`MaskSum` instead keeps the
masks packed (N/8 bytes each) and, every sixteen masks, walks the positions in
cache-sized chunks: an 8x8 bit-matrix transpose (three delta swaps on uint64)
turns the sixteen masks' bytes into a 16-bit code per position, and one lookup
in a 65,536-entry table of partial sums adds all sixteen weights at once (into
int32, folded into the `dtype` sum before it could overflow). The positions are
split into LANES ranges, each summed on its own thread (numpy releases the GIL),
so the caller decodes the next masks meanwhile; at most QUEUE blocks of sixteen
masks wait. Exact (integer weights and sums), memory flat in K (the waiting
blocks, whatever the number of masks).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

BLOCK = 16  # masks per pass: the bits of the code
CHUNK = 32768  # packed bytes (262,144 positions) per step: the buffers stay in cache
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.int64)  # bit j of b
QUEUE = 2  # blocks handed to the lanes and not yet added
LANES = max(1, min(4, os.cpu_count() or 1))  # position ranges summed in parallel
_INT32 = 2**31
_SWAPS = tuple((np.uint64(mask), np.uint64(shift)) for mask, shift in (
    (0x00AA00AA00AA00AA, 7), (0x0000CCCC0000CCCC, 14), (0x00000000F0F0F0F0, 28)))


def _transpose8(words: np.ndarray, scratch: np.ndarray) -> None:
    """Transpose, in place, the 8x8 bit matrix every uint64 of `words` holds
    (byte r, bit c -> byte c, bit r)."""
    for mask, shift in _SWAPS:
        np.right_shift(words, shift, out=scratch)
        np.bitwise_xor(scratch, words, out=scratch)
        np.bitwise_and(scratch, mask, out=scratch)
        np.bitwise_xor(words, scratch, out=words)
        np.left_shift(scratch, shift, out=scratch)
        np.bitwise_xor(words, scratch, out=words)


class _Lane:
    """Positions ``8 * start .. 8 * stop`` of the sum: their buffers and thread."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.gathered = np.zeros((CHUNK, BLOCK), dtype=np.uint8)  # byte i of mask k
        self.scratch = np.empty((CHUNK, 2), dtype=np.uint64)
        self.codes = np.empty((CHUNK, 8, 2), dtype=np.uint8)
        self.looked_up = np.empty((CHUNK, 8), dtype=np.int32)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="mask-sum")

    def add(self, block: list[np.ndarray], table: np.ndarray, positions: np.ndarray) -> None:
        """Add the `block` of packed masks, by `table`, to this lane's `positions`
        (the sum as rows of eight positions)."""
        self.gathered.fill(0)  # masks missing from a short block stay zero
        for start in range(self.start, self.stop, CHUNK):
            stop = min(start + CHUNK, self.stop)
            size = stop - start
            gathered = self.gathered[:size]
            for k, packed in enumerate(block):
                gathered[:, k] = packed[start:stop]
            words = gathered.view(np.uint64)  # (size, 2): masks 0-7 and 8-15
            _transpose8(words, self.scratch[:size])
            planes = words.view(np.uint8).reshape(size, 2, 8)  # byte j: position 7 - j
            codes = self.codes[:size]  # per position: masks 0-7 (low byte), 8-15
            codes[:, :, 0] = planes[:, 0, ::-1]
            codes[:, :, 1] = planes[:, 1, ::-1]
            looked_up = self.looked_up[:size]
            np.take(table, codes.view(np.uint16)[..., 0], out=looked_up, mode="clip")
            out = positions[start:stop]
            np.add(out, looked_up, out=out)


class MaskSum:
    """``sum_k w_k m_k`` of packed binary masks of `length` positions, in `dtype`."""

    def __init__(self, length: int, dtype: type = np.int64) -> None:
        self.length = length
        self.sum: np.ndarray = np.zeros(length, dtype=dtype)
        rows = -(-length // 8)  # packed bytes
        self.partial = np.zeros(rows * 8, dtype=np.int32)  # folded into sum
        self.partial_weight = 0
        self.block: list[tuple[np.ndarray, int]] = []  # packed masks and their weights
        bounds = np.linspace(0, rows, LANES + 1).astype(int)
        self.lanes = [_Lane(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self.pending: deque[list[Future[None]]] = deque()

    def add(self, packed: np.ndarray, weight: int) -> None:
        """Add `weight` (a non-negative int) where the mask is set; `packed` is
        the mask as :func:`fedmask.wire.bits.pack_mask` packs it (``ceil(length/8)``
        bytes, zero padding), added on the lanes' threads: it must not change
        until :meth:`total`."""
        if packed.shape != (self.partial.size // 8,) or packed.dtype != np.uint8:
            raise ValueError(f"expected {self.partial.size // 8} packed bytes, got "
                             f"{packed.dtype} {packed.shape}")
        if not 0 <= weight < _INT32:
            raise ValueError(f"weight must be in [0, 2**31), got {weight}")
        self.block.append((packed, weight))
        if len(self.block) == BLOCK:
            self._submit()

    def _wait(self, keep: int) -> None:
        while len(self.pending) > keep:
            for future in self.pending.popleft():
                future.result()

    def _submit(self) -> None:
        """Hand the block to the lanes (after waiting for older blocks to leave room)."""
        if not self.block:
            return
        masks = [packed for packed, _ in self.block]
        weights = np.zeros(BLOCK, dtype=np.int64)  # code bit k: mask k of the block
        weights[:len(masks)] = [weight for _, weight in self.block]
        self.block = []
        if weights.sum() >= _INT32:  # huge weights (never in practice): one mask at a time
            for packed, weight in zip(masks, weights):
                self.sum += weight * np.unpackbits(packed, count=self.length).astype(self.sum.dtype)
            return
        if self.partial_weight + weights.sum() >= _INT32:
            self._wait(0)
            self._fold()
        self.partial_weight += int(weights.sum())
        self._wait(QUEUE - 1)
        low, high = _BYTE_BITS @ weights[:8], _BYTE_BITS @ weights[8:]  # per code byte
        table = (high[:, None] + low[None, :]).astype(np.int32).reshape(-1)
        positions = self.partial.reshape(-1, 8)
        self.pending.append([lane.thread.submit(lane.add, masks, table, positions)
                             for lane in self.lanes])

    def _fold(self) -> None:
        np.add(self.sum, self.partial[:self.length], out=self.sum)
        self.partial.fill(0)
        self.partial_weight = 0

    def total(self) -> np.ndarray:
        """The sum of every mask added (waits for the lanes, then stops them)."""
        self._submit()
        self._wait(0)
        self._fold()
        for lane in self.lanes:
            lane.thread.shutdown()
        return self.sum
