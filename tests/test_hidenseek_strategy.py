"""HideNseek server: SynFlow set-up, majority vote, bad replies, messages down."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedmask.client import restore_state
from fedmask.methods.hidenseek import wire as wire
from fedmask.nn.models import build_model, num_prunable
from fedmask.wire.bits import pack_mask, unpack_mask
from fedmask.wire.held import FRESH
from strategies import HideNseek

from conftest import FakeGrid


def _model() -> nn.Module:
    return build_model("cnn", 10, 1, 12)


def _strategy(density: float = 0.5, **kwargs) -> HideNseek:
    model = _model()
    return HideNseek(model=model, input_shape=(1, 12, 12), seed=3, density=density,
                     synflow_iterations=5, mask_coding="packed",
                     min_train_nodes=1, **kwargs)


@pytest.fixture
def reply(client_reply):
    def make(bits: np.ndarray | None, n: int, node: int = 1, arrays=None) -> Message:
        content = RecordDict({"metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
        if arrays is not None:
            content[wire.SIGNS] = arrays
        elif bits is not None:
            content.update(wire.encode_signs(bits, np.ones(bits.size, bool), "packed"))
        return client_reply(content, node)
    return make


def test_synflow_keeps_exact_count():
    strategy = _strategy(0.3)
    assert strategy.signs.size == round(0.3 * strategy.prune.size)
    assert strategy.signs.all()


def test_weighted_majority_vote_hand_computed(reply):
    strategy = _strategy()
    k = strategy.signs.size
    a, b, c = np.ones(k, bool), np.ones(k, bool), np.ones(k, bool)
    a[:4] = False           # positions 0-3: only a (n=10) votes -1 -> 10 vs 5+3: -1 wins
    b[2:6] = False          # position 2,3: a+b (15) vs 3 -> -1; 4,5: b (5) vs 13 -> +1
    c[6] = False            # position 6: c (3) vs 15 -> +1
    a[7] = b[7] = False     # position 7: 15 vs 3 -> -1
    arrays, metrics = strategy.aggregate_train(1, [reply(a, 10), reply(b, 5), reply(c, 3)])
    expected = np.ones(k, bool)
    expected[[0, 1, 2, 3, 7]] = False
    np.testing.assert_array_equal(strategy.signs, expected)
    got = unpack_mask(arrays[wire.SIGN_MASK].numpy(), k)
    np.testing.assert_array_equal(got, expected)
    assert metrics["train-loss"] == pytest.approx(1.0)


def test_round_metrics_measure_the_vote(reply):
    strategy = _strategy(vote_smoothing=0.0)
    k = strategy.signs.size
    agree = np.ones(k, bool)
    _, metrics = strategy.aggregate_train(1, [reply(agree, 4), reply(agree, 2)])
    assert strategy.signs.all()  # an all-agreeing vote keeps the state
    assert metrics["sign-flip-share"] == 0.0 and metrics["vote-margin"] == 1.0
    assert metrics["mask-coded-share"] == 0.0  # no client flipped a sign
    half = np.arange(k) < k // 2  # one client flips the second half, outvoting the other
    _, metrics = strategy.aggregate_train(2, [reply(half, 3), reply(agree, 1)])
    np.testing.assert_array_equal(strategy.signs, half)
    assert metrics["sign-flip-share"] == pytest.approx((k - k // 2) / k)
    assert metrics["vote-margin"] == pytest.approx((k // 2 + (k - k // 2) * 0.5) / k)
    assert metrics["mask-coded-share"] == pytest.approx((k - k // 2) / k / 2)


def test_tie_keeps_previous_sign(reply):
    strategy = _strategy()
    k = strategy.signs.size
    strategy.signs[:2] = [False, True]
    up, down = np.ones(k, bool), np.zeros(k, bool)
    strategy.aggregate_train(1, [reply(up, 4), reply(down, 4)])
    assert strategy.signs[0] == False and strategy.signs[1] == True  # noqa: E712


@pytest.mark.parametrize("bad", [
    {"arrays": ArrayRecord({wire.SIGN_MASK: Array(np.zeros(3, np.uint8))})},      # truncated
    {"arrays": ArrayRecord({wire.SIGN_MASK: Array(np.zeros(10**5, np.uint8))})},  # oversized
    {"arrays": ArrayRecord({wire.SIGN_MASK: Array(np.zeros(10, np.float32))})},   # dtype
    {"arrays": ArrayRecord({"other": Array(np.zeros(10, np.uint8))})},            # key
])
def test_malformed_reply_is_dropped_and_round_goes_on(bad, reply):
    strategy = _strategy()
    k = strategy.signs.size
    good = np.zeros(k, bool)
    arrays, _ = strategy.aggregate_train(1, [reply(None, 100, node=7, **bad), reply(good, 1)])
    assert arrays is not None
    assert not strategy.signs.any()  # only the valid reply (all -1) counted


def test_bad_num_examples_and_error_replies_are_dropped(reply, client_reply):
    strategy = _strategy()
    k = strategy.signs.size
    neg = reply(np.zeros(k, bool), -5)
    failed = client_reply(None, node=2)
    assert strategy.aggregate_train(1, [neg, failed]) == (None, None)
    assert strategy.signs.all()


def test_messages_down_carry_seed_hash_and_packed_masks():
    strategy = _strategy()
    k, n = strategy.signs.size, strategy.prune.size
    grid = FakeGrid([11, 12, 13])
    first = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"lr": 0.1}), grid))
    assert len(first) == 3
    sent = first[0].content.array_records[wire.MASKS]
    assert wire.SIGN_MASK not in sent  # round 1: all +1, nothing sent
    assert sent[wire.PRUNE_MASK + FRESH].numpy().size < 0.6 * ((n + 7) // 8)  # a fresh node
    restore_state(first[0], RecordDict(), _model())
    record = first[0].content.array_records[wire.MASKS]
    assert np.array_equal(unpack_mask(record[wire.PRUNE_MASK].numpy(), n), strategy.prune)
    config = first[0].content.config_records["config"]
    assert config["seed"] == 3 and config["weight-hash"] == strategy.net.weight_hash
    assert (config[wire.NUM_PARAMS], config[wire.NUM_KEPT], config["lr"]) == (n, k, 0.1)
    later = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid))
    restore_state(later[0], RecordDict(), _model())
    signs = later[0].content.array_records[wire.MASKS][wire.SIGN_MASK].numpy()
    assert signs.size == (k + 7) // 8
    assert all(v for v in pack_mask(np.ones(k, bool)) == signs)


def test_entropy_coded_flips_vote_like_packed_signs(client_reply):
    packed, coded = _strategy(), _strategy()
    coded.mask_coding = "entropy"
    k = packed.signs.size
    rng = np.random.default_rng(0)
    votes = [(rng.random(k) < 0.8, n) for n in (10, 5, 3)]
    for strategy in (packed, coded):
        for rnd in (1, 2):  # round 2 codes the flips against the round-1 global signs
            replies = [client_reply(RecordDict({
                **wire.encode_signs(bits, strategy.signs, strategy.mask_coding),
                "metrics": MetricRecord({"num-examples": n})}), node=i)
                for i, (bits, n) in enumerate(votes)]
            strategy.aggregate_train(rnd, replies)
            votes = [(~bits, n) for bits, n in votes]
    np.testing.assert_array_equal(coded.signs, packed.signs)


def test_corrupted_entropy_reply_is_dropped(client_reply):
    strategy = _strategy()
    strategy.mask_coding = "entropy"
    k = strategy.signs.size
    noisy = np.random.default_rng(0).random(k) < 0.3
    arrays = wire.encode_signs(noisy, strategy.signs, "entropy")
    payload = arrays[wire.SIGNS][wire.SIGN_FLIPS].numpy().copy()
    payload[payload.size // 2] ^= 0x10  # a bit in the middle of the range-coded stream
    bad = RecordDict({wire.SIGNS: ArrayRecord({wire.SIGN_FLIPS: Array(payload)}),
                      "metrics": MetricRecord({"num-examples": 100})})
    good = RecordDict({**wire.encode_signs(np.ones(k, bool), strategy.signs, "entropy"),
                       "metrics": MetricRecord({"num-examples": 1})})
    strategy.aggregate_train(1, [client_reply(bad, 1), client_reply(good, 2)])
    assert strategy.signs.all()  # only the good reply (all +1) counted


def test_vote_smoothing_keeps_part_of_the_previous_share(reply):
    strategy = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=3,
                         synflow_iterations=5, min_train_nodes=1, vote_smoothing=0.5,
                         mask_coding="packed")
    k = strategy.signs.size
    down, up = np.zeros(k, bool), np.ones(k, bool)
    mixed = np.arange(k) % 2 == 0
    strategy.aggregate_train(1, [reply(up, 3), reply(mixed, 1)])  # round 1 stands alone
    np.testing.assert_allclose(strategy.share, np.where(mixed, 1.0, 0.75))
    strategy.aggregate_train(2, [reply(down, 3), reply(up, 1)])  # 0.5*previous + 0.5*0.25
    np.testing.assert_allclose(strategy.share, np.where(mixed, 0.625, 0.5))
    np.testing.assert_array_equal(strategy.signs, up)  # a tie (0.5) keeps g
    strategy.aggregate_train(3, [reply(down, 1)])  # 0.5*previous + 0.5*0
    np.testing.assert_allclose(strategy.share, np.where(mixed, 0.3125, 0.25))
    assert not strategy.signs.any()


def test_no_smoothing_is_the_papers_majority_vote(reply):
    strategy = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=3,
                         synflow_iterations=5, min_train_nodes=1, vote_smoothing=0.0,
                         mask_coding="packed")
    k = strategy.signs.size
    mixed = np.arange(k) % 3 == 0
    strategy.aggregate_train(1, [reply(np.zeros(k, bool), 5)])
    strategy.aggregate_train(2, [reply(mixed, 3), reply(~mixed, 2)])  # 3 vs 2 examples
    np.testing.assert_array_equal(strategy.signs, mixed)  # this round's majority alone


def test_share_vote_sends_margins_from_round_two(reply):
    strategy = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=3,
                         synflow_iterations=5, min_train_nodes=1, vote="share",
                         mask_coding="packed")
    k = strategy.signs.size
    assert wire.SIGN_MARGIN not in strategy.train_arrays(1)
    a, b = np.ones(k, bool), np.ones(k, bool)
    a[0], b[:2] = False, False  # position 0: share 2/4 (a tie); 1: share 3/4 (margin 1/2)
    strategy.aggregate_train(1, [reply(a, 1), reply(b, 1), reply(np.ones(k, bool), 2)])
    codes = strategy.train_arrays(2)[wire.SIGN_MARGIN].numpy()
    assert codes.dtype == np.uint8 and codes.size == k
    assert list(codes[:3]) == [0, 128, 255]  # |2p - 1| * 255, rounded
    assert wire.SIGN_MARGIN not in strategy.global_arrays()  # evaluation: g only


@pytest.mark.parametrize("kwargs, match", [({"vote": "mean"}, "vote"),
                                           ({"vote_smoothing": 1.0}, "vote-smoothing"),
                                           ({"personal_tuning": "head"}, "personal-tuning"),
                                           ({"personal_lr": 0.0}, "personal-lr")])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), **kwargs)


def test_the_input_shape_comes_from_the_model_when_it_tells_it():
    model = build_model("cnn", 10, 1, 12)
    with pytest.raises(ValueError, match=r"input_shape: .*input_shape=tuple\(images.shape"):
        HideNseek(model=model, synflow_iterations=2)
    model.input_shape = (1, 12, 12)  # e.g. set in the user's Net.__init__
    assert HideNseek(model=model, synflow_iterations=2).num_params == num_prunable(model)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    assert HideNseek(model=mlp, synflow_iterations=2).num_params == 1440
    lazy = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))  # its width is still unknown
    with pytest.raises(ValueError, match=r"input_shape: .*input_shape=tuple\(images.shape"):
        HideNseek(model=lazy, synflow_iterations=2)
