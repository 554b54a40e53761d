"""SSFL client side: the saliency answer, then masked training with node state."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedmask.client import node as ssfl
from fedmask.client.settings import LocalSettings
from fedmask.methods.ssfl import wire as wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights, snip_scores
from strategies import SSFL

from conftest import FakeGrid, tiny_client_data


def _as_received(msg: Message) -> Message:
    msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
    return msg


@pytest.mark.parametrize("init", ["model", "auto"])  # the model's own w0 goes down; seeded
def test_query_answers_the_snip_saliency_of_the_start(client_reply, init):
    strategy = SSFL(model=build_model("cnn", 10, 1, 12), seed=5, init=init, saliency_batches=2,
                    min_train_nodes=1)
    captured = {}

    class Grid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            msg = _as_received(list(messages)[0])
            reply = ssfl.query(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
            captured["reply"] = reply
            return [client_reply(reply.content, node=7, message_type=MessageType.QUERY)]

    strategy.find_mask(Grid([7]), timeout=5)
    values = captured["reply"].content.array_records[wire.SALIENCY][wire.SNIP].numpy()
    assert values.dtype == np.float16 and values.size == strategy.mask.size
    data = tiny_client_data()
    expected = snip_scores(strategy.model, list(data.train)[:2])
    flat = np.concatenate([expected[n].numpy().ravel() for n in strategy.names])
    np.testing.assert_allclose(values.astype(np.float64), flat, rtol=2e-3, atol=1e-7)
    assert strategy.mask.sum() == strategy.keep


def test_masked_training_keeps_pruned_weights_at_zero(client_reply):
    strategy = SSFL(model=build_model("cnn", 10, 1, 12), seed=5, density=0.5, min_train_nodes=1,
                    min_available_nodes=1)
    strategy.mask = np.random.default_rng(0).random(strategy.mask.size) < 0.5
    strategy.keep = int(strategy.mask.sum())
    strategy.start_from_mask()
    state = RecordDict()
    for server_round in (1, 2):
        config = ConfigRecord(LocalSettings(lr=0.05).to_config())
        msg = _as_received(list(strategy.configure_train(server_round, strategy.global_arrays(),
                                                         config, FakeGrid([8])))[0])
        model = build_model("cnn", 10, 1, 12)
        reply = ssfl.train(msg, model, tiny_client_data(), state)
        assert np.all(flat_weights(model)[~strategy.mask] == 0.0)
        strategy.aggregate_train(server_round, [client_reply(reply.content, node=8)])
        flat = torch.cat([strategy.weights[n].flatten() for n in strategy.names]).numpy()
        assert np.all(flat[~strategy.mask] == 0.0) and np.any(flat[strategy.mask])
    assert strategy.holders == {8}
