"""Range coding of masks: exact round trips, size near n*H(p), corruption rejected."""

import math

import numpy as np
import pytest

from fedmask.nn.models import build_model, seeded_init
from fedmask.nn.pruning import prunable_names, synflow_mask
from fedmask.wire import entropy
from fedmask.wire.bits import CodecError, flatten_masks

N = 100_000


def _mask(p: float, n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < p


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("per_position", [False, True])
def test_round_trip_bit_for_bit(p, per_position):
    bits = _mask(p)
    probs = np.full(N, p) if per_position else None
    payload = entropy.encode(bits, probs)
    assert payload.dtype == np.uint8 and payload.ndim == 1
    np.testing.assert_array_equal(entropy.decode(payload, N, probs), bits)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("per_position", [False, True])
def test_size_within_two_percent_of_n_times_entropy(p, per_position):
    bits = _mask(p)
    probs = np.full(N, p) if per_position else None
    bound = N * entropy.binary_entropy(p)
    size_bits = 8 * entropy.encode(bits, probs).size
    assert size_bits <= 1.02 * bound + 8 * 64  # 2% + header and coder flush
    assert size_bits >= 0.98 * bound  # a coder cannot beat the entropy by much


def test_per_position_model_beats_iid_on_skewed_probabilities():
    rng = np.random.default_rng(1)
    probs = np.where(rng.random(N) < 0.5, 0.02, 0.98)  # a polarised FedPM theta
    bits = rng.random(N) < probs
    coded = entropy.encode(bits, probs).size
    assert coded < 0.2 * entropy.encode(bits).size
    assert 8 * coded <= 1.02 * entropy.information_bits(bits, probs) + 8 * 64
    np.testing.assert_array_equal(entropy.decode(entropy.encode(bits, probs), N, probs), bits)


def test_round_trip_on_real_masks():
    model = seeded_init(build_model("cnn", 10, 1, 28), 0)
    prune = flatten_masks(synflow_mask(model, 0.2, (1, 28, 28), 10), prunable_names(model))
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    for bits in (prune, weights >= 0):
        np.testing.assert_array_equal(entropy.decode(entropy.encode(bits), bits.size), bits)
    small = entropy.encode(prune).size
    assert 8 * small <= 1.02 * prune.size * entropy.binary_entropy(prune.mean()) + 8 * 64


def test_empty_and_constant_masks():
    for bits in (np.zeros(0, bool), np.zeros(1000, bool), np.ones(1000, bool)):
        np.testing.assert_array_equal(entropy.decode(entropy.encode(bits), bits.size), bits)
    assert entropy.encode(np.zeros(10**5, bool)).size < 32


def test_improbable_bits_still_round_trip():
    bits = np.array([True, True, False, False])
    probs = np.array([0.0, 1e-9, 1.0, 1 - 1e-9])
    np.testing.assert_array_equal(entropy.decode(entropy.encode(bits, probs), 4, probs), bits)


@pytest.mark.parametrize("position", ["digest", "count", "stream"])
def test_corrupted_payload_raises(position):
    bits = _mask(0.7)
    payload = entropy.encode(bits).copy()
    index = {"digest": 0, "count": entropy.DIGEST_BYTES, "stream": payload.size // 2}[position]
    payload[index] ^= 0x24
    with pytest.raises(CodecError, match="sign-flips"):
        entropy.decode(payload, N, field="sign-flips")


@pytest.mark.parametrize("keep", [0, 5, 11, 12, 100, -4])
def test_truncated_payload_raises(keep):
    payload = entropy.encode(_mask(0.7))
    with pytest.raises(CodecError):
        entropy.decode(payload[:keep] if keep >= 0 else payload[:keep], N)


def test_decoding_with_other_probabilities_raises():
    bits = _mask(0.9)
    payload = entropy.encode(bits, np.full(N, 0.9))
    with pytest.raises(CodecError, match="stream"):  # invalid stream, or digest mismatch
        entropy.decode(payload, N, np.full(N, 0.6))


@pytest.mark.parametrize("bad, match", [
    (np.zeros(40, np.float32), "uint8"),
    (np.zeros((4, 10), np.uint8), "1-D"),
    ([1, 2, 3], "uint8"),
])
def test_malformed_payload_types_raise(bad, match):
    with pytest.raises(CodecError, match=match):
        entropy.decode(bad, 10)


def test_bad_inputs_to_encode_raise():
    with pytest.raises(CodecError, match="bool"):
        entropy.encode(np.zeros(4, np.uint8))
    with pytest.raises(CodecError, match="probabilities"):
        entropy.encode(np.zeros(4, bool), np.full(3, 0.5))
    with pytest.raises(CodecError, match=r"\[0, 1\]"):
        entropy.encode(np.zeros(2, bool), np.array([0.5, 1.5]))
    with pytest.raises(CodecError, match=r"\[0, 1\]"):
        entropy.decode(entropy.encode(np.zeros(2, bool)), 2, np.array([np.nan, 0.5]))


def test_count_larger_than_length_raises():
    payload = entropy.encode(np.ones(50, bool))
    with pytest.raises(CodecError, match="ones-count"):
        entropy.decode(payload, 10)


def test_information_bits_and_binary_entropy():
    assert entropy.binary_entropy(0.5) == pytest.approx(1.0)
    assert entropy.binary_entropy(0.0) == pytest.approx(0.0) == entropy.binary_entropy(1.0)
    assert entropy.binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    bits = np.array([True, False, True, True])
    assert entropy.information_bits(bits, np.full(4, 0.5)) == pytest.approx(4.0)
    assert entropy.information_bits(bits, np.array([0.5, 0.5, 0.25, 1.0])) == pytest.approx(
        1 + 1 + 2 + 0, abs=1e-6)
    p = (3 + 0.5) / 5  # the i.i.d. model's estimate from the ones-count
    assert entropy.information_bits(bits) == pytest.approx(-(3 * math.log2(p) + math.log2(1 - p)))


def _grouped_bits(seed: int = 4) -> tuple[np.ndarray, entropy.Groups]:
    """Bits whose share of ones is set by their group (40 groups of 5,000) and,
    a little, by their bin."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(rng.permutation(40), 5000)
    bins = rng.integers(0, entropy.BINS, groups.size).astype(np.uint8)
    share = rng.random(40)[groups] * (0.75 + bins / (4 * entropy.BINS))
    return (rng.random(groups.size) < share).astype(np.uint8), entropy.Groups(groups, bins)


def test_grouped_round_trips_and_beats_bins_alone():
    bits, context = _grouped_bits()
    payload = entropy.encode_grouped(bits, context)
    assert np.array_equal(entropy.decode_grouped(payload, context), bits)
    assert payload.size < 0.85 * entropy.encode_codes(bits, context.bins).size
    odd = entropy.Groups(np.arange(7), np.zeros(7, np.uint8))  # an odd number of groups
    seven = np.array([1, 0, 1, 1, 0, 0, 1], np.uint8)
    assert np.array_equal(entropy.decode_grouped(entropy.encode_grouped(seven, odd), odd), seven)


def test_grouped_refuses_a_corrupted_header_stream_or_other_context():
    bits, context = _grouped_bits()
    payload = entropy.encode_grouped(bits, context)
    for position in (3, payload.size - 5):  # a group's class, the stream
        bad = payload.copy()
        bad[position] ^= 0x33
        with pytest.raises(CodecError):
            entropy.decode_grouped(bad, context)
    other = entropy.Groups(np.roll(context.groups, 1), context.bins)
    with pytest.raises(CodecError):
        entropy.decode_grouped(payload, other)
    with pytest.raises(CodecError, match="truncated"):
        entropy.decode_grouped(payload[:10], context)
