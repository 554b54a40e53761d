"""MPFL server: vote consensus by hand, the density schedule, masked FedAvg, bad replies."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmask.methods.masked import wire as masked_wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights
from fedmask.wire.sparse import KEPT_VALUES, encode_sparse
from strategies import MPFL
from strategies.mpfl import consensus

from conftest import FakeGrid


def test_consensus_hand_computed():
    current = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)  # position 7 already pruned
    masks = np.array([[1, 1, 0, 1, 0, 0, 1, 0],
                      [1, 0, 1, 1, 0, 0, 1, 0],
                      [1, 1, 0, 0, 1, 0, 0, 0],
                      [1, 0, 0, 1, 0, 1, 0, 0]], bool)
    votes = masks.sum(axis=0)  # 4, 2, 1, 3, 1, 1, 2, 0
    magnitude = np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.8, 0.4, 5.0])
    got = consensus(votes, magnitude, current, keep=5)
    # 4 votes: 0; 3: 3; 2: 1 and 6; one of the 1-vote positions 2, 4, 5: |w0| picks 2.
    np.testing.assert_array_equal(np.flatnonzero(got), [0, 1, 2, 3, 6])
    assert not consensus(votes, magnitude, current, keep=7)[7]  # pruned stays pruned


def _strategy(**kwargs) -> MPFL:
    kwargs = {"density": 0.25, "prune_rate": 0.5, **kwargs}
    return MPFL(model=build_model("cnn", 10, 1, 12), seed=2, **{"min_train_nodes": 1, **kwargs})


def _vote_reply(client_reply, strategy, own, n=10, node=1):
    content = RecordDict({**masked_wire.encode_client_mask(own, strategy.mask,
                                                           strategy.mask_coding),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
    return client_reply(content, node)


def _weights_reply(client_reply, strategy, state, n=10, node=1):
    content = RecordDict({masked_wire.WEIGHTS: encode_sparse(state, strategy.mask, strategy.names),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
    return client_reply(content, node)


def _search(strategy, client_reply):
    """Run the vote rounds with clients that keep the first positions of C."""
    while strategy.phase == 1:
        keep = round(0.5 * strategy.mask.sum())
        own = np.zeros_like(strategy.mask)
        own[np.flatnonzero(strategy.mask)[:keep]] = True
        strategy.aggregate_train(strategy.iteration + 1,
                                 [_vote_reply(client_reply, strategy, own, node=i)
                                  for i in (1, 2)])


def test_density_schedule_then_phase_two(client_reply):
    strategy = _strategy()
    n = strategy.mask.size
    assert strategy.vote_rounds() == 2 and strategy.phase == 1
    own = np.zeros(n, bool)
    own[: n // 2] = True
    _, metrics = strategy.aggregate_train(1, [_vote_reply(client_reply, strategy, own)])
    assert strategy.mask.sum() == round(0.5 * n) and strategy.phase == 1
    assert (metrics["phase"], metrics["density"]) == (1, pytest.approx(0.5, abs=1e-5))
    _search(strategy, client_reply)
    assert strategy.mask.sum() == round(0.25 * n)
    assert strategy.phase == 2 and strategy.iteration == 2
    w0 = flat_weights(strategy.model)
    start = torch.cat([strategy.weights[name].flatten() for name in strategy.names]).numpy()
    np.testing.assert_array_equal(start, np.where(strategy.mask, w0, 0.0))


def test_the_vote_rounds_and_the_switch_to_masked_fedavg_are_logged(client_reply, caplog):
    strategy = _strategy()
    with caplog.at_level("INFO", logger="flwr"):
        _search(strategy, client_reply)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MPFL:")]
    n = strategy.mask.size
    assert lines == [f"MPFL: vote round 1: consensus mask keeps {round(n / 2)} of {n} weights "
                     f"(density 0.500)",
                     f"MPFL: vote round 2: consensus mask keeps {round(n / 4)} of {n} weights "
                     f"(density 0.250)",
                     "MPFL: the vote is over; masked FedAvg from the next round on"]


@pytest.mark.parametrize("num_rounds", [1, 2])
def test_start_refuses_rounds_that_end_before_masked_fedavg(num_rounds):
    strategy = _strategy()  # 2 vote rounds
    with pytest.raises(ValueError, match=f"num_rounds: MPFL votes for 2 rounds .* at least 3, "
                                         f"got {num_rounds}"):
        strategy.start(grid=FakeGrid([1]), num_rounds=num_rounds)


def test_masked_fedavg_weights_by_examples_and_keeps_zeros(client_reply):
    strategy = _strategy()
    _search(strategy, client_reply)
    states = [{k: torch.full_like(v, fill) for k, v in strategy.weights.items()}
              for fill in (1.0, 4.0)]
    arrays, metrics = strategy.aggregate_train(3, [
        _weights_reply(client_reply, strategy, states[0], n=30, node=1),
        _weights_reply(client_reply, strategy, states[1], n=10, node=2)])
    assert metrics["phase"] == 2
    flat = torch.cat([strategy.weights[n].flatten() for n in strategy.names]).numpy()
    assert np.all(flat[strategy.mask] == pytest.approx(1.75))  # (30*1 + 10*4) / 40
    assert np.all(flat[~strategy.mask] == 0.0)
    assert arrays[KEPT_VALUES].numpy().size == strategy.mask.sum()
    assert strategy.holders == {1, 2}


def test_phase_two_sends_the_mask_only_to_nodes_without_it(client_reply):
    strategy = _strategy()
    _search(strategy, client_reply)
    grid = FakeGrid([1, 2])
    first = list(strategy.configure_train(3, ArrayRecord(), ConfigRecord(), grid))
    assert all(masked_wire.MASK in m.content.array_records[masked_wire.WEIGHTS] for m in first)
    strategy.holders = {1}
    later = {m.metadata.dst_node_id: m for m in
             strategy.configure_train(4, ArrayRecord(), ConfigRecord(), grid)}
    assert masked_wire.MASK not in later[1].content.array_records[masked_wire.WEIGHTS]
    assert masked_wire.MASK in later[2].content.array_records[masked_wire.WEIGHTS]
    config = later[1].content.config_records["config"]
    assert (config[masked_wire.PHASE], config[masked_wire.MASK_DIGEST]) == (2,
                                                                            masked_wire.mask_digest(strategy.mask))


def test_failed_node_is_sent_the_mask_again(client_reply):
    strategy = _strategy()
    _search(strategy, client_reply)
    strategy.holders = {1, 2}
    strategy.aggregate_train(3, [client_reply(None, node=2),
                                 _weights_reply(client_reply, strategy, strategy.weights)])
    assert strategy.holders == {1}


@pytest.mark.parametrize("phase", [1, 2])
def test_malformed_replies_are_dropped(client_reply, phase):
    strategy = _strategy()
    if phase == 2:
        _search(strategy, client_reply)
    mask_before = strategy.mask.copy()
    bad = client_reply(RecordDict({
        masked_wire.CLIENT_MASK: ArrayRecord({masked_wire.CLIENT_MASK: Array(np.zeros(3,
                                                                                      np.uint8))}),
        masked_wire.WEIGHTS: ArrayRecord({KEPT_VALUES: Array(np.zeros(3, np.float32))}),
        "metrics": MetricRecord({"num-examples": 5})}), node=9)
    assert strategy.aggregate_train(phase, [bad]) == (None, None)
    np.testing.assert_array_equal(strategy.mask, mask_before)


@pytest.mark.parametrize("kwargs, match", [
    ({"prune_rate": 0.0}, "prune-rate"), ({"prune_rate": 1.0}, "prune-rate"),
    ({"prune_structure": "channel"}, "prune-structure"), ({"mask_coding": "zip"}, "mask-coding"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _strategy(**kwargs)
