"""FedSparsify client side, driven by real messages from the strategy, with node state."""

import numpy as np
import pytest
from flwr.app import RecordDict

from fedmask.client import node as fedsparsify
from fedmask.methods.masked import wire as masked_wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights
from fedmask.wire.sparse import flat_state
from strategies import FedSparsify

from conftest import sent_messages, tiny_client_data


@pytest.mark.parametrize("variant, coding", [("global", "packed"), ("local", "packed"),
                                             ("local", "entropy")])
def test_rounds_end_to_end_reach_the_final_sparsity(variant, coding, client_reply):
    strategy = FedSparsify(model=build_model("cnn", 10, 1, 12), num_server_rounds=3, seed=5,
                           fedsparsify_variant=variant,
                           final_sparsity=0.8, mask_coding=coding)
    states = {21: RecordDict(), 22: RecordDict()}
    for server_round in (1, 2, 3):
        replies, mask = [], strategy.mask.copy()
        for msg in sent_messages(strategy, server_round):
            node = msg.metadata.dst_node_id
            model = build_model("cnn", 10, 1, 12)
            reply = fedsparsify.train(msg, model, tiny_client_data(), states[node])
            trained = flat_weights(model)
            assert np.all(trained[~mask] == 0.0) and np.any(trained[mask])
            if variant == "local":
                own = masked_wire.decode_client_mask(reply, mask, coding)
                assert own.sum() == min(strategy.target_kept(server_round), mask.sum())
                assert np.abs(trained[own]).min() >= np.abs(trained[mask & ~own]).max(initial=0)
            replies.append(client_reply(reply.content, node))
        strategy.aggregate_train(server_round, replies)
        flat = flat_state(strategy.weights, strategy.names)
        assert np.all(flat[~strategy.mask] == 0.0) and not strategy.mask[~mask].any()
    assert strategy.mask.mean() == pytest.approx(0.2, abs=0.02 if variant == "local" else 1e-5)
    evaluated = fedsparsify.evaluate(sent_messages(strategy, 4, kind="evaluate")[0],
                                     build_model("cnn", 10, 1, 12), tiny_client_data(),
                                     states[21])
    assert 0.0 <= evaluated.content.metric_records["metrics"]["accuracy"] <= 1.0
