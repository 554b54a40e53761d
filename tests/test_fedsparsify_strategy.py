"""FedSparsify server: majority merge by hand, global pruning to the schedule, bad replies."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmask.methods.fedsparsify import wire as wire
from fedmask.methods.fedsparsify.schedule import scheduled_sparsity
from fedmask.methods.masked import wire as masked_wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import keep_largest
from fedmask.wire.sparse import KEPT_VALUES, encode_sparse, flat_state
from strategies import FedSparsify
from strategies.fedsparsify import majority_merge

from conftest import FakeGrid


def test_majority_merge_hand_computed():
    masks = np.array([[1, 1, 0, 0, 1],
                      [1, 0, 1, 0, 0],
                      [0, 1, 1, 0, 0],
                      [1, 0, 0, 1, 0]], bool)  # votes 3, 2, 2, 1, 1 of 4
    values = np.array([[1.0, 2.0, 0.0, 0.0, 9.0],
                       [3.0, 0.0, 4.0, 0.0, 0.0],
                       [0.0, 6.0, 8.0, 0.0, 0.0],
                       [5.0, 0.0, 0.0, 7.0, 0.0]], np.float32)
    n = [10, 20, 30, 40]
    updates = list(zip(n, masks, values))
    keep, merged = majority_merge(updates)
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0])  # half (2 of 4) is enough
    # over all clients, pruned = 0: (10*1 + 20*3 + 40*5)/100, (10*2 + 30*6)/100, (20*4 + 30*8)/100
    np.testing.assert_allclose(merged, [2.7, 2.0, 3.2, 0.0, 0.0], rtol=1e-6)
    keep, merged = majority_merge(updates, nnz_only=True)
    # over the clients that kept it: 270/70, 200/40, 320/50
    np.testing.assert_allclose(merged, [270 / 70, 5.0, 6.4, 0.0, 0.0], rtol=1e-6)
    assert merged.dtype == np.float32


def _strategy(**kwargs) -> FedSparsify:
    return FedSparsify(model=build_model("cnn", 10, 1, 12), **{"num_server_rounds": 4, "seed": 3,
                                                           "min_train_nodes": 1, **kwargs})


def _reply(client_reply, strategy, state, n=10, node=1, own=None):
    own = strategy.mask if own is None else own
    arrays = {masked_wire.WEIGHTS: encode_sparse(state, own, strategy.names)}
    if strategy.variant == "local":
        arrays.update(masked_wire.encode_client_mask(own, strategy.mask, strategy.mask_coding))
    content = RecordDict({**arrays, "metrics": MetricRecord({"num-examples": n,
                                                             "train-loss": 1.0})})
    return client_reply(content, node)


def _noisy(strategy, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in strategy.weights.items()}


def test_global_variant_prunes_the_mean_by_magnitude_to_the_schedule(client_reply):
    strategy = _strategy()
    n = strategy.mask.size
    for server_round in range(1, 5):
        list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                      FakeGrid([1, 2])))
        states = [_noisy(strategy, server_round), _noisy(strategy, 10 + server_round)]
        mean = flat_state({k: 0.25 * states[0][k] + 0.75 * states[1][k] for k in states[0]},
                          strategy.names)
        before = strategy.mask.copy()
        _, metrics = strategy.aggregate_train(server_round, [
            _reply(client_reply, strategy, states[0], n=10, node=1),
            _reply(client_reply, strategy, states[1], n=30, node=2)])
        kept = round((1 - scheduled_sparsity(server_round, 1, 4, 1, 0.9)) * n)
        expected = keep_largest(np.abs(np.where(before, mean, 0)), before, kept)
        np.testing.assert_array_equal(strategy.mask, expected)
        flat = flat_state(strategy.weights, strategy.names)
        assert np.all(flat[~strategy.mask] == 0.0)
        np.testing.assert_allclose(flat[strategy.mask], mean[strategy.mask], rtol=1e-5)
        assert metrics["density"] == pytest.approx(kept / n)
    assert strategy.mask.sum() == round(0.1 * n)  # final sparsity exactly


def test_the_mask_goes_down_again_only_when_it_changed(client_reply):
    strategy = _strategy(prune_every=2, num_server_rounds=5)  # prunes at 1 (to 0), 3, 5
    grid = FakeGrid([1, 2])
    for server_round, resent in [(1, True), (2, False), (3, False), (4, True)]:
        messages = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                                 grid))
        carries = [masked_wire.MASK in m.content.array_records[masked_wire.WEIGHTS]
                   for m in messages]
        assert carries == [resent, resent], server_round
        strategy.aggregate_train(server_round, [
            _reply(client_reply, strategy, _noisy(strategy, node), node=node) for node in (1, 2)])
    assert strategy.mask.mean() < 1.0


def test_local_variant_merges_the_clients_masks(client_reply):
    strategy = _strategy(fedsparsify_variant="local", nnz_average=True)
    config = {m.metadata.dst_node_id: m.content.config_records["config"] for m in
              strategy.configure_train(2, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2, 3]))}
    target = config[1][wire.TARGET_KEPT]
    assert target == round((1 - scheduled_sparsity(2, 1, 4, 1, 0.9)) * strategy.mask.size)
    assert config[1][wire.VARIANT] == "local"
    states = [_noisy(strategy, node) for node in (1, 2, 3)]
    owns = [keep_largest(np.abs(flat_state(s, strategy.names)), strategy.mask, target)
            for s in states]
    _, metrics = strategy.aggregate_train(2, [
        _reply(client_reply, strategy, s, n=10 * node, node=node, own=own)
        for node, (s, own) in enumerate(zip(states, owns), start=1)])
    updates = [(10 * k, own, np.where(own, flat_state(s, strategy.names), 0))
               for k, (s, own) in enumerate(zip(states, owns), start=1)]
    keep, values = majority_merge(updates, nnz_only=True)
    np.testing.assert_array_equal(strategy.mask, keep)
    np.testing.assert_allclose(flat_state(strategy.weights, strategy.names), values, rtol=1e-6)
    assert metrics["density"] == pytest.approx(keep.mean())


def test_local_reply_keeping_the_wrong_count_is_dropped(client_reply):
    strategy = _strategy(fedsparsify_variant="local")
    list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2])))
    assert strategy.aggregate_train(2, [_reply(client_reply, strategy, strategy.weights)]) \
        == (None, None)  # kept everything, not the round's target
    assert strategy.mask.all()


@pytest.mark.parametrize("variant", ["global", "local"])
def test_malformed_replies_are_dropped(client_reply, variant):
    strategy = _strategy(fedsparsify_variant=variant)
    weights = {name: value.clone() for name, value in strategy.weights.items()}
    bad = client_reply(RecordDict({
        masked_wire.CLIENT_MASK: ArrayRecord({masked_wire.CLIENT_MASK: Array(np.zeros(3,
                                                                                      np.uint8))}),
        masked_wire.WEIGHTS: ArrayRecord({KEPT_VALUES: Array(np.zeros(3, np.float32))}),
        "metrics": MetricRecord({"num-examples": 5})}), node=9)
    assert strategy.aggregate_train(1, [bad]) == (None, None)
    assert strategy.mask.all()
    for name, value in weights.items():
        assert torch.equal(strategy.weights[name], value)


@pytest.mark.parametrize("kwargs, match", [
    ({"fedsparsify_variant": "both"}, "fedsparsify-variant"), ({"prune_start": 5}, "prune-start"),
    ({"prune_every": 0}, "prune-every"), ({"final_sparsity": 1.0}, "final-sparsity"),
    ({"mask_coding": "zip"}, "mask-coding"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _strategy(**kwargs)
