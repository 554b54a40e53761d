"""The mask-coding option: both codings round-trip; bad names and payloads raise."""

import numpy as np
import pytest

from fedmask.wire.bits import CodecError
from fedmask.wire.coding import CODINGS, decode_mask, encode_mask


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("probs", [None, "array"])
def test_round_trip(coding, probs):
    rng = np.random.default_rng(0)
    bits = rng.random(1001) < 0.8
    model = np.full(bits.size, 0.8) if probs else None
    payload = encode_mask(bits, coding, model)
    np.testing.assert_array_equal(decode_mask(payload, bits.size, coding, model), bits)


def test_packed_is_ceil_n_over_8_and_entropy_is_smaller_on_skewed_masks():
    bits = np.random.default_rng(0).random(80_000) < 0.97
    assert encode_mask(bits, "packed").size == 10_000
    assert encode_mask(bits, "entropy").size < 0.3 * 10_000


def test_unknown_coding_raises():
    with pytest.raises(CodecError, match="mask-coding"):
        encode_mask(np.zeros(8, bool), "zip")
    with pytest.raises(CodecError, match="mask-coding"):
        decode_mask(np.zeros(1, np.uint8), 8, "zip")


@pytest.mark.parametrize("coding", CODINGS)
def test_wrong_length_raises_naming_the_field(coding):
    payload = encode_mask(np.ones(100, bool), coding)
    with pytest.raises(CodecError, match="sampled-mask"):
        decode_mask(payload[:3], 100, coding, field="sampled-mask")
