"""The shared server pieces of the mask methods: sums of packed masks."""

import numpy as np
import pytest

from fedmask.server.mask_sum import MaskSum


@pytest.mark.parametrize("length", [1, 7, 8, 13, 1000, 12_345])
@pytest.mark.parametrize("count", [1, 5, 16, 17, 40])
def test_mask_sum_is_the_weighted_count_of_set_bits(length, count):
    rng = np.random.default_rng(length * count)
    bits = rng.random((count, length)) < 0.4
    weights = rng.integers(1, 100, count)
    total = MaskSum(length)
    for mask, weight in zip(bits, weights):
        total.add(mask, int(weight))
    expected = (bits * weights[:, None]).sum(axis=0)
    np.testing.assert_array_equal(total.total(), expected)


def test_mask_sum_is_exact_past_the_int32_range():
    bits = np.random.default_rng(0).random((17, 100)) < 0.5
    total = MaskSum(100)
    for mask in bits:
        total.add(mask, 10**9)
    np.testing.assert_array_equal(total.total(), bits.sum(axis=0).astype(np.int64) * 10**9)


def test_mask_sum_refuses_a_mask_of_another_length():
    with pytest.raises(ValueError, match="100 booleans"):
        MaskSum(100).add(np.zeros(99, bool), 1)
