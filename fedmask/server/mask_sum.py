"""Weighted per-position sums of many binary masks, sixteen masks per pass.

``sum_k w_k m_k`` over K masks of N bits costs, one mask at a time, K passes of
a multiply and an add over an N-long int64 array. :class:`MaskSum` instead sets
each mask as one bit of a 16-bit code per position (a shift and an or on
uint8), and every sixteen masks adds, per position, the entry of a 65,536-entry
table of partial sums that the code selects: all sixteen weights in one lookup
and one add (into int32, folded into the `dtype` sum before it could overflow).
The work runs on one background thread (numpy releases the GIL), so the caller
decodes the next mask meanwhile; at most QUEUE masks wait. Exact (integer
weights and sums), memory flat in K (the code arrays and the queue, whatever
the number of masks).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

BLOCK = 16  # masks per pass: the bits of the code
_BITS = ((np.arange(1 << BLOCK)[:, None] >> np.arange(BLOCK)) & 1).astype(np.uint8)  # 1 MB
QUEUE = 2  # masks handed to the worker and not yet added
_INT32 = 2**31


class MaskSum:
    """``sum_k w_k m_k`` of boolean masks of `length` positions, in `dtype`."""

    def __init__(self, length: int, dtype: type = np.int64) -> None:
        self.sum: np.ndarray = np.zeros(length, dtype=dtype)
        self.partial = np.zeros(length, dtype=np.int32)  # sums below 2**31, folded into sum
        self.partial_weight = 0
        self.bytes = (np.zeros(length, dtype=np.uint8), np.zeros(length, dtype=np.uint8))
        self.codes = np.empty(length, dtype=np.uint16)  # buffers reused by every pass:
        self.looked_up = np.empty(length, dtype=np.int32)  # fresh pages cost more than work
        self.weights: list[int] = []
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="mask-sum")
        self.pending: deque[Future[None]] = deque()

    def add(self, mask: np.ndarray, weight: int) -> None:
        """Add `weight` (a non-negative int) where the boolean `mask` (`length`
        positions) is set (on the worker thread; `mask` must not change until
        :meth:`total`)."""
        if mask.shape != self.sum.shape or mask.dtype != np.bool_:
            raise ValueError(f"expected {self.sum.size} booleans, got {mask.dtype} {mask.shape}")
        if not 0 <= weight < _INT32:
            raise ValueError(f"weight must be in [0, 2**31), got {weight}")
        while len(self.pending) >= QUEUE:
            self.pending.popleft().result()
        self.pending.append(self.worker.submit(self._add, mask, weight))

    def _add(self, mask: np.ndarray, weight: int) -> None:
        """Shift the code byte left and put the mask in its lowest bit."""
        target = self.bytes[len(self.weights) // 8]  # masks 0-7: low byte, 8-15: high
        np.left_shift(target, np.uint8(1), out=target)
        np.bitwise_or(target, mask.view(np.uint8), out=target)
        self.weights.append(weight)
        if len(self.weights) == BLOCK:
            self._flush()

    def _flush(self) -> None:
        if not self.weights:
            return
        weights = np.zeros(BLOCK, dtype=np.int64)  # by code bit: the last mask of a byte
        for index, weight in enumerate(self.weights):  # is its bit 0 (see _add)
            in_byte = min(len(self.weights) - index // 8 * 8, 8)
            weights[index // 8 * 8 + in_byte - 1 - index % 8] = weight
        table = _BITS @ weights
        low, high = self.bytes
        np.left_shift(high, 8, out=self.codes, dtype=np.uint16)
        np.bitwise_or(self.codes, low, out=self.codes, dtype=np.uint16)
        if weights.sum() >= _INT32:  # huge weights: straight into the sum
            np.add(self.sum, table.astype(self.sum.dtype)[self.codes], out=self.sum)
        else:
            if self.partial_weight + weights.sum() >= _INT32:
                self._fold()
            self.partial_weight += int(weights.sum())
            np.take(table.astype(np.int32), self.codes, out=self.looked_up, mode="clip")
            np.add(self.partial, self.looked_up, out=self.partial)
        low.fill(0)
        high.fill(0)
        self.weights = []

    def _fold(self) -> None:
        np.add(self.sum, self.partial, out=self.sum)
        self.partial.fill(0)
        self.partial_weight = 0

    def total(self) -> np.ndarray:
        """The sum of every mask added (waits for the worker, then stops it)."""
        while self.pending:
            self.pending.popleft().result()
        self._flush()
        self._fold()
        self.worker.shutdown()
        return self.sum
