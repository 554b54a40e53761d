"""The shared server pieces of the mask methods (strategies.seeded_mask)."""

import numpy as np
import pytest

from strategies.seeded_mask import add_where


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_add_where_adds_the_weight_only_where_bits_are_set(dtype):
    rng = np.random.default_rng(0)
    total, expected = np.zeros(1000, dtype), np.zeros(1000, dtype)
    for weight in (1, 255, 256, 70_000, 10**9):  # past uint8 and int32 ranges
        bits = rng.random(1000) < 0.5
        add_where(total, weight, bits)
        np.add(expected, weight, out=expected, where=bits)
    assert total.dtype == dtype
    np.testing.assert_array_equal(total, expected)
