"""FedPM server: Beta-posterior aggregation by hand, prior reset, bad replies, messages down."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmask.methods.fedpm import wire as wire
from fedmask.nn.models import build_model
from fedmask.wire.entropy import information_bits
from fedmask.wire.held import FRESH, restore
from strategies import FedPM

from conftest import FakeGrid


def _strategy(**kwargs) -> FedPM:
    """A FedPM strategy; the hand-computed tests take the posterior mean unless told."""
    kwargs.setdefault("theta_format", "float32")
    kwargs.setdefault("posterior", "mean")
    return FedPM(model=build_model("cnn", 10, 1, 12), seed=5, **{"min_train_nodes": 1, **kwargs})


def _masks(strategy: FedPM, columns: list[list[int]]) -> list[np.ndarray]:
    """Client masks whose first positions are `columns` (one list per position)."""
    masks = [np.zeros(strategy.num_params, bool) for _ in columns[0]]
    for position, column in enumerate(columns):
        for mask, bit in zip(masks, column):
            mask[position] = bool(bit)
    return masks


@pytest.fixture
def replies(client_reply):
    def make(strategy: FedPM, masks: list[np.ndarray], sizes: list[int]):
        return [client_reply(RecordDict({
            **wire.encode_sample(m, strategy.theta, strategy.mask_coding),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})}), node=i + 1)
            for i, (m, n) in enumerate(zip(masks, sizes))]
    return make


# Three clients, three positions: all keep / one keeps / none keeps; rest all zero.
ROUND_1 = [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_bayesian_aggregation_hand_computed(replies):
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1),
                                                          [10, 5, 5]))
    np.testing.assert_allclose(strategy.theta[:4], [4 / 5, 2 / 5, 1 / 5, 1 / 5], rtol=1e-6)
    np.testing.assert_allclose(arrays[wire.THETA].numpy()[:3], [0.8, 0.4, 0.2], rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(1.0)


@pytest.mark.parametrize("prior_reset, expected", [
    (1, [4 / 5, 4 / 5, 4 / 5, 4 / 5]),          # round 2 alone: (1 + 3) / (2 + 3)
    (0, [7 / 8, 5 / 8, 4 / 8, 4 / 8]),          # rounds 1 and 2 accumulate
    (2, [7 / 8, 5 / 8, 4 / 8, 4 / 8]),          # next reset only at round 3
])
def test_prior_reset(replies, prior_reset, expected):
    strategy = _strategy(prior_reset=prior_reset)
    strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1), [10, 5, 5]))
    ones = [np.ones(strategy.num_params, bool)] * 3
    strategy.aggregate_train(2, replies(strategy, ones, [10, 5, 5]))
    np.testing.assert_allclose(strategy.theta[:4], expected, rtol=1e-6)


def test_reset_every_two_rounds_forgets_at_round_three(replies):
    strategy = _strategy(prior_reset=2)
    for rnd in (1, 2):
        strategy.aggregate_train(rnd, replies(strategy, _masks(strategy, ROUND_1), [1, 1, 1]))
    zeros = [np.zeros(strategy.num_params, bool)] * 3
    strategy.aggregate_train(3, replies(strategy, zeros, [1, 1, 1]))
    np.testing.assert_allclose(strategy.theta[:3], [1 / 5] * 3, rtol=1e-6)


def test_weighted_aggregation_uses_num_examples(replies):
    strategy = _strategy(weighted_aggregation=True)
    strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1), [10, 5, 5]))
    # weights 3 * n_k / 20 = 1.5, 0.75, 0.75
    np.testing.assert_allclose(strategy.theta[:3], [4 / 5, 2.5 / 5, 1 / 5], rtol=1e-6)


def test_uint8_theta_goes_down_quantised(replies):
    strategy = _strategy(theta_format="uint8")
    strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1), [1, 1, 1]))
    codes = strategy.global_arrays()[wire.THETA].numpy()
    assert codes.dtype == np.uint8 and codes.size == strategy.num_params
    assert list(codes[:3]) == [204, 102, 51]  # floor(256 * theta)
    np.testing.assert_allclose(strategy.theta[:3], (np.array([204, 102, 51]) + 0.5) / 256)


@pytest.mark.parametrize("coding", ["packed", "entropy"])
def test_reported_mask_entropy_is_that_of_the_masks_received(replies, coding):
    strategy = _strategy(mask_coding=coding)
    rng = np.random.default_rng(0)
    masks = [rng.random(strategy.num_params) < 0.9 for _ in range(2)]
    _, metrics = strategy.aggregate_train(1, replies(strategy, masks, [1, 1]))
    expected = np.mean([information_bits(m, np.full(m.size, 0.5)) for m in masks])
    assert metrics["mask-entropy-bpp"] == pytest.approx(expected / strategy.num_params)
    assert metrics["mask-iid-entropy-bpp"] == pytest.approx(0.469, abs=0.01)  # H(0.9)


@pytest.mark.parametrize("bad", [
    ArrayRecord({wire.SAMPLED_MASK: Array(np.zeros(3, np.uint8))}),
    ArrayRecord({wire.SAMPLED_MASK: Array(np.zeros(10, np.float32))}),
    ArrayRecord({"other": Array(np.zeros(10, np.uint8))}),
])
@pytest.mark.parametrize("coding", ["packed", "entropy"])
def test_malformed_reply_is_dropped_and_round_goes_on(replies, client_reply, bad, coding):
    strategy = _strategy(mask_coding=coding)
    good = replies(strategy, [np.ones(strategy.num_params, bool)], [1])
    broken = client_reply(RecordDict({wire.MASK: bad,
                                      "metrics": MetricRecord({"num-examples": 50})}), node=9)
    arrays, _ = strategy.aggregate_train(1, [broken, *good])
    assert arrays is not None
    np.testing.assert_allclose(strategy.theta, 2 / 3, rtol=1e-6)  # only the good reply


def test_messages_down_carry_seed_theta_and_settings():
    strategy = FedPM(model=build_model("cnn", 10, 1, 12), seed=5, eval_samples=4,
                     mask_coding="entropy")
    grid = FakeGrid([11, 12])
    sent = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"lr": 0.1}), grid))
    assert len(sent) == 2
    assert sent[0].content.array_records[wire.THETA][wire.THETA + FRESH].numpy().size < 200
    restore(sent[0], RecordDict())  # a fresh node: theta coded within its distribution
    theta = sent[0].content.array_records[wire.THETA][wire.THETA].numpy()
    assert theta.dtype == np.uint8 and theta.size == strategy.num_params
    assert np.all(theta == 128)  # 0.5
    config = sent[0].content.config_records["config"]
    assert (config["seed"], config["init"]) == (5, "signed-constant")
    assert config["weight-hash"] == strategy.net.weight_hash
    assert (config["num-params"], config["mask-coding"], config["eval-samples"]) == (
        strategy.num_params, "entropy", 4)
    assert (config[wire.THETA_FORMAT], config[wire.ESTIMATOR], config["lr"]) == (
        "uint8", "ste", 0.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"theta_format": "float16"}, "theta-format"),
    ({"prior_reset": -1}, "prior-reset"),
    ({"posterior": "median"}, "posterior"),
    ({"mask_coding": "zip"}, "mask-coding"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FedPM(model=build_model("cnn", 10, 1, 12), **kwargs)


def test_evaluation_model_thresholds_theta():
    strategy = _strategy()
    theta = np.full(strategy.num_params, 0.9, np.float32)
    theta[::3] = 0.2
    model = strategy.evaluation_model(wire.encode_theta(theta)).eval()
    first = model[0].weight  # effective weight w * (theta > 0.5) in eval mode
    frozen = model[0].parametrizations.weight.original
    keep = torch.from_numpy(theta[:first.numel()] > 0.5).reshape(first.shape)
    assert torch.equal(first, frozen * keep)
    assert torch.equal(frozen, dict(strategy.model.named_parameters())["0.weight"])


def test_posterior_mode_is_the_clipped_share_of_masks(replies):
    strategy = _strategy(posterior="mode")
    strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1), [10, 5, 5]))
    share = np.array([3, 1, 0, 0]) / 3  # masks keeping positions 0-3, of 3
    np.testing.assert_allclose(strategy.theta[:4], 0.01 + 0.98 * share, rtol=1e-6)


def test_posterior_mode_accumulates_until_the_reset(replies):
    strategy = _strategy(posterior="mode", prior_reset=0)
    strategy.aggregate_train(1, replies(strategy, _masks(strategy, ROUND_1), [1, 1, 1]))
    ones = [np.ones(strategy.num_params, bool)] * 3
    strategy.aggregate_train(2, replies(strategy, ones, [1, 1, 1]))
    share = np.array([6, 4, 3]) / 6  # rounds 1 and 2 together
    np.testing.assert_allclose(strategy.theta[:3], 0.01 + 0.98 * share, rtol=1e-6)
