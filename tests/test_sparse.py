"""Sparse weights on the wire: round trip, exact zeros, refused counts and values."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedmask.wire.bits import CodecError
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse, encode_sparse, flat_state, replace_flat

NAMES = ["conv.weight", "fc.weight"]


def _state():
    gen = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 1, 3, 3, generator=gen),
            "conv.bias": torch.randn(4, generator=gen),
            "fc.weight": torch.randn(3, 8, generator=gen)}


def _mask(density=0.3):
    return np.random.default_rng(0).random(36 + 24) < density


def test_round_trip_keeps_values_and_zeros_the_rest():
    state, mask = _state(), _mask()
    record = encode_sparse(state, mask, NAMES)
    assert record[KEPT_VALUES].numpy().size == mask.sum()
    assert record[KEPT_VALUES].numpy().dtype == np.float32
    assert set(record) == {KEPT_VALUES, "conv.bias"}  # the dense small tensor travels dense
    got = decode_sparse(record, mask, state, NAMES)
    assert list(got) == list(state)
    flat = torch.cat([got[n].flatten() for n in NAMES]).numpy()
    expected = torch.cat([state[n].flatten() for n in NAMES]).numpy()
    np.testing.assert_array_equal(flat[mask], expected[mask])
    assert np.all(flat[~mask] == 0.0)
    assert torch.equal(got["conv.bias"], state["conv.bias"])


def test_wrong_count_is_refused():
    state, mask = _state(), _mask()
    record = encode_sparse(state, mask, NAMES)
    record[KEPT_VALUES] = Array(record[KEPT_VALUES].numpy()[:-1])
    with pytest.raises(CodecError, match=KEPT_VALUES):
        decode_sparse(record, mask, state, NAMES)


@pytest.mark.parametrize("bad, match", [
    (lambda v: v.astype(np.float64), "float32"),
    (lambda v: np.where(np.arange(v.size) == 0, np.nan, v).astype(np.float32), "finite"),
])
def test_bad_values_are_refused(bad, match):
    state, mask = _state(), _mask()
    record = encode_sparse(state, mask, NAMES)
    record[KEPT_VALUES] = Array(bad(record[KEPT_VALUES].numpy()))
    with pytest.raises(CodecError, match=match):
        decode_sparse(record, mask, state, NAMES)


def test_missing_or_misshapen_dense_tensor_is_refused():
    state, mask = _state(), _mask()
    record = encode_sparse(state, mask, NAMES)
    missing = ArrayRecord({KEPT_VALUES: record[KEPT_VALUES]})
    with pytest.raises(CodecError, match="conv.bias"):
        decode_sparse(missing, mask, state, NAMES)
    record["conv.bias"] = Array(np.zeros(5, np.float32))
    with pytest.raises(CodecError, match="shape"):
        decode_sparse(record, mask, state, NAMES)


def test_mask_of_the_wrong_size_is_refused():
    with pytest.raises(CodecError, match="positions"):
        encode_sparse(_state(), np.ones(10, bool), NAMES)


def test_flat_state_and_replace_flat_are_inverse_on_the_named_tensors():
    state = _state()
    flat = flat_state(state, NAMES)
    assert flat.size == 36 + 24 and flat[0] == state["conv.weight"].flatten()[0]
    replaced = replace_flat(state, np.arange(60, dtype=np.float32), NAMES)
    assert replaced["fc.weight"].shape == (3, 8) and replaced["fc.weight"][0, 0] == 36.0
    assert replaced["conv.bias"] is state["conv.bias"]  # other tensors untouched
    np.testing.assert_array_equal(flat_state(replaced, NAMES), np.arange(60))
