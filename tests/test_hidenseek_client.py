"""HideNseek client side, driven by real messages from the strategy."""

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from fedmask.client import node as hidenseek
from fedmask.client.settings import LocalSettings
from fedmask.methods.hidenseek import client as hidenseek_client
from fedmask.methods.hidenseek import wire as wire
from fedmask.nn.models import build_model
from fedmask.nn.seeded import WeightHashError
from fedmask.nn.supermask import frozen_weight, supermasks
from fedmask.wire.bits import unpack_mask
from fedmask.wire.entropy import binary_entropy
from strategies import HideNseek

from conftest import FakeGrid, tiny_client_data


@pytest.fixture(params=["packed", "entropy"])
def strategy(request):
    return HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=1,
                     synflow_iterations=5,
                     mask_coding=request.param, min_train_nodes=1)


def _as_received(msg: Message) -> Message:
    """The message as a client gets it (content and metadata, no live links)."""
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _messages(strategy, kind="train", server_round=1):
    config = LocalSettings(local_epochs=1, lr=0.05, optimizer="adam").to_config()
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    sent = configure(server_round, strategy.global_arrays(), config, FakeGrid([21, 22]))
    return [_as_received(m) for m in sent]


def test_train_reply_carries_k_sign_bits_that_the_server_accepts(strategy, client_reply):
    msg = _messages(strategy)[0]
    reply = hidenseek.train(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
    bits = unpack_mask(wire.decode_signs(reply, strategy.signs, strategy.mask_coding),
                       strategy.signs.size)
    assert wire.UPLINK_KEYS[strategy.mask_coding] in reply.content.array_records[wire.SIGNS]
    assert bits.dtype == bool and bits.size == strategy.signs.size
    assert not bits.all()  # training flipped some signs away from the all-+1 start
    received = client_reply(reply.content, node=21)
    arrays, metrics = strategy.aggregate_train(1, [received])
    np.testing.assert_array_equal(strategy.signs, bits)  # one voter decides
    assert metrics["train-loss"] > 0
    flips = (~bits).mean()  # round 1: the global signs are all +1
    assert metrics["mask-entropy-bpp"] == pytest.approx(
        binary_entropy(flips) * bits.size / strategy.num_params, rel=1e-3)


def test_client_with_a_different_model_is_refused(strategy):
    msg = _messages(strategy)[0]
    with pytest.raises(WeightHashError, match="weight-hash"):
        hidenseek.train(msg, build_model("conv4", 10, 1, 12), tiny_client_data(), RecordDict())


def test_evaluate_reports_local_and_personalised_accuracy(strategy):
    msg = _messages(strategy, "evaluate")[0]
    reply = hidenseek.evaluate(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 64
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["personal-accuracy"] <= 1.0
    assert metrics["personal-accuracy"] >= metrics["accuracy"]  # fine-tuned on the same data


def test_frozen_weights_stay_seed_weights_after_training(strategy):
    msg = _messages(strategy)[0]
    model = build_model("cnn", 10, 1, 12)
    hidenseek.train(msg, model, tiny_client_data(), RecordDict())
    reference = dict(strategy.model.named_parameters())
    for name in supermasks(model):
        assert torch.equal(frozen_weight(model, name), reference[name])


def test_share_vote_scores_start_at_w_times_two_p_minus_one():
    strategy = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=1,
                         synflow_iterations=5, min_train_nodes=1, vote="share")
    k = strategy.signs.size
    strategy.signs = np.arange(k) % 2 == 0
    strategy.share = np.where(strategy.signs, 0.75, 0.5)  # margins 1/2; ties (share 1/2)
    msg = _messages(strategy, server_round=2)[0]
    net = hidenseek.train_module(msg, build_model("cnn", 10, 1, 12), RecordDict())
    scores = torch.cat([m.scores.detach().flatten() for m in supermasks(net).values()])
    weights = torch.cat([frozen_weight(net, name).flatten() for name in supermasks(net)])
    kept = torch.as_tensor(strategy.prune)
    g = torch.as_tensor(np.where(strategy.signs, 1.0, -1.0), dtype=torch.float32)
    magnitude = torch.where(g > 0, 128 / 255, 0.5 / 255)  # ties keep g's sign, half a level
    torch.testing.assert_close(scores[kept], weights[kept].abs() * g * magnitude)


def test_layer_score_scale_starts_each_layer_in_units_of_its_kept_weights_rms():
    strategy = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=1,
                         synflow_iterations=5, min_train_nodes=1, score_scale="layer")
    strategy.signs = np.arange(strategy.signs.size) % 3 == 0
    msg = _messages(strategy, server_round=2)[0]
    net = hidenseek.train_module(msg, build_model("cnn", 10, 1, 12), RecordDict())
    g = np.zeros(strategy.prune.size)
    g[strategy.prune] = np.where(strategy.signs, 1.0, -1.0)
    start = 0
    for name, mask in supermasks(net).items():
        weight = frozen_weight(net, name).flatten().numpy()
        layer = slice(start, start + weight.size)
        kept, start = strategy.prune[layer], layer.stop
        rms = np.sqrt(np.mean(weight[kept].astype(np.float64) ** 2))
        np.testing.assert_allclose(mask.scores.detach().flatten().numpy()[kept],
                                   np.abs(weight[kept]) * g[layer][kept] / rms, rtol=1e-5)
    assert start == strategy.prune.size


def test_layer_scale_is_one_in_a_layer_that_keeps_nothing():
    model = build_model("cnn", 10, 1, 12)
    prune = np.zeros(sum(p.numel() for p in model.parameters()), dtype=bool)
    prune[-5:] = True  # only the last layer keeps weights
    scale = wire.layer_scale(model, prune)
    last = model[-1].weight.detach().flatten().numpy()
    assert np.all(scale[:-last.size] == 1.0)
    np.testing.assert_allclose(scale[-1], 1 / np.sqrt(np.mean(last[-5:].astype(np.float64) ** 2)),
                               rtol=1e-6)


def test_unknown_score_scale_is_refused():
    with pytest.raises(ValueError, match="score-scale"):
        HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=1,
                  synflow_iterations=5, score_scale="unit")
    with pytest.raises(ValueError, match="score-scale"):
        wire.sign_net(build_model("cnn", 10, 1, 12), np.ones(10, bool), np.ones(10, bool),
                      score_scale="unit")


def _memory_strategy(seed=1, score_memory=True):
    return HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=seed,
                     synflow_iterations=5, min_train_nodes=1, score_memory=score_memory)


def _start_scores(strategy, state, server_round=2):
    msg = _messages(strategy, server_round=server_round)[0]
    net = hidenseek.train_module(msg, build_model("cnn", 10, 1, 12), state)
    return wire.read_scores(net, strategy.prune), net


def test_score_memory_restarts_from_the_magnitudes_the_node_last_trained():
    strategy, state = _memory_strategy(), RecordDict()
    hidenseek.train(_messages(strategy)[0], build_model("cnn", 10, 1, 12), tiny_client_data(),
                    state)
    (trained,) = state.array_records[hidenseek_client.MEMORY].values()
    trained = trained.numpy()
    assert trained.dtype == np.float32 and trained.shape == (strategy.signs.size,)
    strategy.signs = np.arange(strategy.signs.size) % 2 == 0
    start, net = _start_scores(strategy, state)
    np.testing.assert_array_equal(start, np.where(strategy.signs, 1, -1) * np.abs(trained))
    weights = torch.cat([frozen_weight(net, n).flatten() for n in supermasks(net)]).numpy()
    assert not np.allclose(np.abs(start), np.abs(weights[strategy.prune]))  # not |w|


def test_score_memory_ignores_scores_of_another_seeded_net_and_is_off_by_default():
    strategy, state = _memory_strategy(seed=1), RecordDict()
    hidenseek.train(_messages(strategy)[0], build_model("cnn", 10, 1, 12), tiny_client_data(),
                    state)
    other = _memory_strategy(seed=2)
    start, net = _start_scores(other, state)
    weights = torch.cat([frozen_weight(net, n).flatten() for n in supermasks(net)]).numpy()
    np.testing.assert_allclose(start, np.abs(weights[other.prune]))  # |w| * (+1)
    plain, fresh = _memory_strategy(score_memory=False), RecordDict()
    hidenseek.train(_messages(plain)[0], build_model("cnn", 10, 1, 12), tiny_client_data(), fresh)
    assert hidenseek_client.MEMORY not in fresh.array_records


def test_downlink_context_is_computed_once_per_seeded_net(strategy):
    first, again = _messages(strategy)[0], _messages(strategy, server_round=2)[0]
    context = hidenseek_client.downlink_context(first, build_model("cnn", 10, 1, 12))
    assert hidenseek_client.downlink_context(again, build_model("cnn", 10, 1, 12)) is context
    other = HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12), seed=2,
                      synflow_iterations=5, min_train_nodes=1)
    fresh = hidenseek_client.downlink_context(_messages(other)[0], build_model("cnn", 10, 1, 12))
    assert fresh is not context
    prune = np.packbits(other.prune)
    assert np.array_equal(fresh(wire.PRUNE_MASK, {}).bins,
                          wire.downlink_context(other.model)(wire.PRUNE_MASK, {}).bins)
    assert fresh(wire.SIGN_MASK, {wire.PRUNE_MASK: prune}).groups.size == other.signs.size
