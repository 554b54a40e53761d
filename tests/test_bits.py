import math

import numpy as np
import pytest
import torch

from fedmask.wire.bits import (
    CodecError,
    flatten_masks,
    pack_mask,
    scatter,
    select,
    split_flat,
    unpack_mask,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_codec_error_format_and_field():
    err = CodecError("sign-mask", "bad")
    assert isinstance(err, ValueError)
    assert err.field == "sign-mask"
    assert str(err) == "sign-mask: bad"


@pytest.mark.parametrize("length", range(1, 201))
def test_round_trip_every_length(length):
    rng = np.random.default_rng(length)
    mask = rng.random(length) < 0.5
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == math.ceil(length / 8)
    out = unpack_mask(packed, length)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, mask)

    tensor = torch.from_numpy(mask)
    np.testing.assert_array_equal(pack_mask(tensor), packed)
    np.testing.assert_array_equal(unpack_mask(pack_mask(tensor), length), tensor.numpy())


def test_empty_mask_round_trips():
    packed = pack_mask(np.zeros(0, dtype=bool))
    assert packed.size == 0
    assert unpack_mask(packed, 0).shape == (0,)


def test_pack_uses_big_bitorder():
    mask = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1], dtype=bool)
    np.testing.assert_array_equal(pack_mask(mask), np.array([0b10100000, 0b10000000], np.uint8))


def test_pack_flattens_in_c_order():
    mask = torch.tensor([[True, False], [False, True]])
    np.testing.assert_array_equal(pack_mask(mask), np.array([0b10010000], np.uint8))


@pytest.mark.parametrize("mask", [np.array([0, 1, 1]), torch.tensor([0.0, 1.0])])
def test_pack_rejects_non_bool(mask):
    with pytest.raises(CodecError, match="dtype") as info:
        pack_mask(mask)
    assert info.value.field == "mask"


def _unpack_error(packed, length) -> CodecError:
    with pytest.raises(CodecError) as info:
        unpack_mask(packed, length, field="sign-mask")
    assert info.value.field == "sign-mask"
    assert str(info.value).startswith("sign-mask: ")
    return info.value


def test_truncated_payload(rng):
    packed = pack_mask(rng.random(20) < 0.5)
    err = _unpack_error(packed[:-1], 20)
    assert "expected 3 bytes" in str(err) and "got 2 bytes" in str(err)


def test_oversized_payload(rng):
    packed = np.append(pack_mask(rng.random(20) < 0.5), np.uint8(0))
    err = _unpack_error(packed, 20)
    assert "expected 3 bytes" in str(err) and "got 4 bytes" in str(err)


@pytest.mark.parametrize("dtype", [np.int8, np.float32, np.int64])
def test_wrong_dtype(dtype):
    err = _unpack_error(np.zeros(2, dtype=dtype), 16)
    assert "dtype" in str(err) and np.dtype(dtype).name in str(err)


def test_two_dimensional_payload():
    assert "ndim=2" in str(_unpack_error(np.zeros((1, 2), dtype=np.uint8), 16))


def test_non_array_payload():
    assert "np.ndarray" in str(_unpack_error([0, 0], 16))


def test_negative_length():
    assert "non-negative" in str(_unpack_error(np.zeros(0, dtype=np.uint8), -1))


@pytest.mark.parametrize("length", [3.0, True, "3"])
def test_non_int_length(length):
    assert "int" in str(_unpack_error(np.zeros(1, dtype=np.uint8), length))


def test_numpy_int_length_is_accepted():
    out = unpack_mask(np.array([0b11000000], np.uint8), np.int64(2))
    np.testing.assert_array_equal(out, [True, True])


@pytest.mark.parametrize("length", [1, 7, 9, 15])
def test_non_zero_padding_bits(length):
    packed = np.zeros(math.ceil(length / 8), dtype=np.uint8)
    packed[-1] = 1  # lowest bit of the last byte is always padding here
    assert "non-zero padding bits" in str(_unpack_error(packed, length))


def test_full_last_byte_has_no_padding():
    out = unpack_mask(np.array([0xFF, 0x01], np.uint8), 16)
    np.testing.assert_array_equal(out, [True] * 8 + [False] * 7 + [True])


def test_flatten_split_round_trip(rng):
    shapes = {"conv.weight": (2, 1, 3), "fc.weight": (4,), "scalar": ()}
    masks = {name: torch.from_numpy(np.asarray(rng.random(s) < 0.5)) for name, s in shapes.items()}
    flat = flatten_masks(masks, list(shapes))
    assert flat.dtype == np.bool_ and flat.shape == (11,)
    np.testing.assert_array_equal(flat[:6], masks["conv.weight"].numpy().ravel())
    out = split_flat(flat, shapes)
    assert list(out) == list(shapes)
    for name, tensor in out.items():
        assert tensor.dtype == torch.bool
        assert tensor.shape == shapes[name]
        assert torch.equal(tensor, masks[name])


def test_flatten_follows_names_order():
    masks = {"a": torch.tensor([True, True]), "b": torch.tensor([False])}
    np.testing.assert_array_equal(flatten_masks(masks, ["b", "a"]), [False, True, True])
    assert flatten_masks(masks, []).shape == (0,)


def test_split_returns_copies():
    flat = np.array([True, False])
    out = split_flat(flat, {"a": (2,)})
    flat[0] = False
    assert out["a"].tolist() == [True, False]


def test_flatten_missing_name():
    with pytest.raises(CodecError) as info:
        flatten_masks({"a": torch.ones(2, dtype=torch.bool)}, ["a", "b"])
    assert info.value.field == "b"


def test_flatten_non_bool():
    with pytest.raises(CodecError, match="dtype") as info:
        flatten_masks({"a": torch.ones(2)}, ["a"])
    assert info.value.field == "a"


@pytest.mark.parametrize("size", [4, 6])
def test_split_wrong_length(size):
    with pytest.raises(CodecError, match="expected 5 entries") as info:
        split_flat(np.ones(size, dtype=bool), {"a": (2, 2), "b": (1,)})
    assert info.value.field == "mask"


def test_select_and_scatter_values():
    mask = np.array([True, False, True, False])
    values = np.array([1.5, 2.5, 3.5, 4.5], dtype=np.float32)
    kept = select(mask, values)
    np.testing.assert_array_equal(kept, [1.5, 3.5])
    out = scatter(mask, kept, 0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.5, 0.0, 3.5, 0.0])


def test_scatter_bool_values_with_fill():
    out = scatter(np.array([False, True, True]), np.array([True, False]), True)
    np.testing.assert_array_equal(out, [True, True, False])


@pytest.mark.parametrize("count", [1, 3])
def test_scatter_wrong_count(count):
    with pytest.raises(CodecError, match=f"expected 2 kept values, got {count}") as info:
        scatter(np.array([True, False, True]), np.zeros(count), 0.0)
    assert info.value.field == "values"


def test_select_shape_mismatch():
    with pytest.raises(CodecError) as info:
        select(np.array([True, False]), np.zeros(3))
    assert info.value.field == "values"
