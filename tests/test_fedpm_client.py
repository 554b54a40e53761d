"""FedPM client side, driven by real messages from the strategy."""

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from fedmask.client import node as fedpm
from fedmask.client.settings import LocalSettings
from fedmask.methods.fedpm import client as fedpm_hooks
from fedmask.methods.fedpm import wire as wire
from fedmask.nn.models import build_model
from fedmask.nn.seeded import WeightHashError
from fedmask.nn.supermask import BernoulliSupermask, frozen_weight, supermasks
from fedmask.wire.bits import unpack_mask
from strategies import FedPM

from conftest import FakeGrid, tiny_client_data


@pytest.fixture(params=["packed", "entropy"])
def strategy(request):
    return FedPM(model=build_model("cnn", 10, 1, 12), seed=1, mask_coding=request.param,
                 min_train_nodes=1)


def _received(strategy, kind="train") -> Message:
    config = LocalSettings(local_epochs=1, lr=0.1, optimizer="adam").to_config()
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    msg = list(configure(1, strategy.global_arrays(), config, FakeGrid([21, 22])))[0]
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_train_reply_is_a_sampled_mask_the_server_accepts(strategy, client_reply):
    reply = fedpm.train(_received(strategy), build_model("cnn", 10, 1, 12), tiny_client_data(),
                        RecordDict())
    mask = unpack_mask(wire.decode_sample(reply, strategy.theta, strategy.mask_coding),
                       strategy.num_params)
    assert mask.dtype == bool and mask.size == strategy.num_params
    assert 0.3 < mask.mean() < 0.7  # sampled from probabilities that started at 0.5
    arrays, metrics = strategy.aggregate_train(1, [client_reply(reply.content, node=21)])
    np.testing.assert_allclose(strategy.theta, np.where(mask, 0.99, 0.01), atol=1 / 256)
    assert metrics["train-loss"] > 0


def test_training_moves_scores_and_never_the_frozen_weights(strategy):
    model = build_model("cnn", 10, 1, 12)
    fedpm.train(_received(strategy), model, tiny_client_data(), RecordDict())
    reference = dict(strategy.model.named_parameters())
    masks = supermasks(model)
    assert masks and all(isinstance(m, BernoulliSupermask) for m in masks.values())
    for name, mask in masks.items():
        assert torch.equal(frozen_weight(model, name), reference[name])
        assert not torch.allclose(mask.theta(), torch.full_like(mask.theta(), 0.5),
                                  atol=1e-3)  # scores learned


def test_scores_start_from_the_global_theta(strategy):
    strategy.wire_theta = wire.quantise(np.linspace(0.01, 0.99, strategy.num_params), "uint8")
    model = build_model("cnn", 10, 1, 12)
    net, theta = fedpm_hooks._global_net(_received(strategy), model)
    np.testing.assert_allclose(theta, strategy.theta)
    got = np.concatenate([m.theta().detach().numpy().ravel() for m in supermasks(net).values()])
    np.testing.assert_allclose(got, strategy.theta, rtol=1e-5)


def test_client_with_a_different_model_is_refused(strategy):
    with pytest.raises(WeightHashError, match="weight-hash"):
        fedpm.train(_received(strategy), build_model("conv4", 10, 1, 12), tiny_client_data(),
                    RecordDict())


def test_evaluate_reports_thresholded_and_sampled_accuracy(strategy):
    reply = fedpm.evaluate(_received(strategy, "evaluate"), build_model("cnn", 10, 1, 12),
                           tiny_client_data(), RecordDict())
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 64
    for key in ("accuracy", "sampled-accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["loss"] > 0 and metrics["sampled-loss"] > 0
