"""MPFL client side, driven by real messages from the strategy, with node state."""

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

import fedmask.client
from fedmask.client import node as mpfl
from fedmask.methods.masked import wire as masked_wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights
from fedmask.nn.supermask import fold
from fedmask.wire.records import ReplyError
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse
from strategies import MPFL

from conftest import sent_messages, tiny_client_data


@pytest.fixture(params=["packed", "entropy"])
def strategy(request):
    return MPFL(model=build_model("cnn", 10, 1, 12), seed=4, density=0.3, prune_rate=0.5,
                mask_coding=request.param)


def _received(reply, client_reply, node):
    return client_reply(reply.content, node)


def test_two_phases_end_to_end_with_exact_zeros(strategy, client_reply):
    states = {21: RecordDict(), 22: RecordDict()}
    server_round = 0
    while strategy.phase == 1:  # mask search: each client prunes half of C
        server_round += 1
        kept_before = int(strategy.mask.sum())
        replies = []
        for msg in sent_messages(strategy, server_round):
            reply = mpfl.train(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
            own = masked_wire.decode_client_mask(reply, strategy.mask, strategy.mask_coding)
            assert own.sum() == round(0.5 * kept_before) and not own[~strategy.mask].any()
            replies.append(_received(reply, client_reply, msg.metadata.dst_node_id))
        strategy.aggregate_train(server_round, replies)
    assert strategy.mask.sum() == round(0.3 * strategy.mask.size)
    for _ in range(2):  # two real rounds of masked FedAvg
        server_round += 1
        replies = []
        for msg in sent_messages(strategy, server_round):
            node = msg.metadata.dst_node_id
            model = build_model("cnn", 10, 1, 12)
            reply = mpfl.train(msg, model, tiny_client_data(), states[node])
            trained = flat_weights(model)
            assert np.all(trained[~strategy.mask] == 0.0) and np.any(trained[strategy.mask])
            replies.append(_received(reply, client_reply, node))
        strategy.aggregate_train(server_round, replies)
        flat = torch.cat([strategy.weights[n].flatten() for n in strategy.names]).numpy()
        assert np.all(flat[~strategy.mask] == 0.0)
        assert strategy.holders == {21, 22}
    assert all(masked_wire.STATE_KEY in state.array_records for state in states.values())
    last = sent_messages(strategy, server_round + 1)
    assert all(masked_wire.MASK not in m.content.array_records[masked_wire.WEIGHTS] for m in last)


def test_node_without_the_mask_refuses_and_is_sent_it_again(strategy, client_reply):
    strategy.mask[:] = False
    strategy.mask[: strategy.target] = True
    strategy.weights = build_model("cnn", 10, 1, 12).state_dict()
    strategy.holders = {21}  # the server believes node 21 holds C, but it lost its state
    msg = next(m for m in sent_messages(strategy, 5) if m.metadata.dst_node_id == 21)
    with pytest.raises(ReplyError, match="mask"):
        mpfl.train(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())


def test_evaluate_in_both_phases(strategy):
    reply = mpfl.evaluate(sent_messages(strategy, 1, kind="evaluate")[0], build_model("cnn", 10, 1,
                                                                                      12),
                          tiny_client_data(), RecordDict())
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 64 and 0.0 <= metrics["accuracy"] <= 1.0


def test_phase_two_reply_decodes_against_the_servers_mask(strategy, client_reply):
    strategy.mask[:] = False
    strategy.mask[::4] = True
    strategy.target = int(strategy.mask.sum())
    strategy.weights = build_model("cnn", 10, 1, 12).state_dict()
    msg = sent_messages(strategy, 3)[0]
    reply = mpfl.train(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
    state = decode_sparse(reply.content.array_records[masked_wire.WEIGHTS], strategy.mask,
                          strategy.weights, strategy.names)
    assert set(state) == set(strategy.weights)


@pytest.mark.parametrize("init", ["model", "auto"])
def test_a_vote_trains_from_the_models_own_weights_or_the_seeded_ones(init):
    model = build_model("cnn", 10, 1, 12)
    own = flat_weights(model).copy()  # before a seeded init overwrites them
    strategy = MPFL(model=model, init=init, density=0.3, prune_rate=0.5)
    msg = sent_messages(strategy, 1)[0]
    start = fedmask.client.train_module(msg, build_model("cnn", 10, 1, 12), RecordDict())
    got = flat_weights(fold(start))
    record = msg.content.array_records[masked_wire.WEIGHTS]
    if init == "model":  # w0 * C travels with the mask (C keeps everything in round 1)
        assert np.array_equal(got, own) and KEPT_VALUES in record
    else:  # only the mask: the node rebuilds w0 from the seed
        assert np.array_equal(got, flat_weights(strategy.model)) and not np.array_equal(got, own)
        assert list(record) == [masked_wire.MASK]
