"""The shared server pieces of the mask methods: sums of packed masks."""

import numpy as np
import pytest

from fedmask.server.mask_sum import MaskSum
from fedmask.wire.bits import pack_mask


@pytest.mark.parametrize("length", [1, 7, 8, 13, 1000, 70_001])
@pytest.mark.parametrize("count", [1, 5, 16, 17, 40])
def test_mask_sum_is_the_weighted_count_of_set_bits(length, count):
    rng = np.random.default_rng(length * count)
    bits = rng.random((count, length)) < 0.4
    weights = rng.integers(1, 100, count)
    total = MaskSum(length)
    for mask, weight in zip(bits, weights):
        total.add(pack_mask(mask), int(weight))
    expected = (bits * weights[:, None]).sum(axis=0)
    np.testing.assert_array_equal(total.total(), expected)


@pytest.mark.parametrize("weight", [10**8, 10**9])  # folded between blocks; within one
def test_mask_sum_is_exact_past_the_int32_range(weight):
    bits = np.random.default_rng(0).random((40, 100)) < 0.5
    total = MaskSum(100)
    for mask in bits:
        total.add(pack_mask(mask), weight)
    np.testing.assert_array_equal(total.total(), bits.sum(axis=0).astype(np.int64) * weight)


def test_mask_sum_refuses_a_mask_of_another_length():
    with pytest.raises(ValueError, match="13 packed bytes"):
        MaskSum(100).add(np.zeros(12, np.uint8), 1)
