"""HideNseek client side, driven by real messages from the strategy."""

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from fedmask.client import node as hidenseek
from fedmask.client.settings import LocalSettings
from fedmask.methods.hidenseek import client as hidenseek_client
from fedmask.methods.hidenseek import wire as wire
from fedmask.nn import training
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


def _messages(strategy, kind="train", server_round=1, loss="cross-entropy",
              personal_tuning="weights"):
    config = LocalSettings(local_epochs=1, lr=0.05, optimizer="adam", loss=loss,
                           personal_tuning=personal_tuning).to_config()
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


@pytest.mark.parametrize("tuning", ["weights", "training"])
def test_evaluate_reports_local_and_personalised_accuracy(strategy, tuning):
    msg = _messages(strategy, "evaluate", personal_tuning=tuning)[0]
    reply = hidenseek.evaluate(msg, build_model("cnn", 10, 1, 12), tiny_client_data(), RecordDict())
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 64
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["personal-accuracy"] <= 1.0
    assert metrics["personal-accuracy"] >= metrics["accuracy"]  # fine-tuned on the same data


@pytest.mark.parametrize("loss", ["cross-entropy", "balanced"])
def test_the_personal_model_adds_the_log_prior_after_the_balanced_loss(strategy, loss,
                                                                        monkeypatch):
    """Fine-tuned and evaluated on the loss a round trains on: after ``balanced`` the
    personal model's logits gain the client's log label distribution."""
    shifts = []
    real = training.evaluate

    def spy(model, loader, device=training.CPU, precision="float32", logit_shift=None):
        shifts.append(logit_shift)
        return real(model, loader, device, precision, logit_shift)

    monkeypatch.setattr(training, "evaluate", spy)
    data = tiny_client_data()
    msg = _messages(strategy, "evaluate", loss=loss)[0]
    hidenseek.evaluate(msg, build_model("cnn", 10, 1, 12), data, RecordDict())
    global_shift, personal_shift = shifts
    assert global_shift is None  # the global model predicts from its own logits
    if loss == "cross-entropy":
        assert personal_shift is None
    else:
        torch.testing.assert_close(personal_shift, training.log_prior(data.label_counts))


@pytest.mark.parametrize("tuning", ["weights", "training"])
def test_personal_fine_tuning_trains_the_weights_or_the_scores(strategy, tuning, monkeypatch):
    """``weights``: SGD at ``personal-lr`` on the global network's weights, every one
    of them; ``training``: the round's Adam at its lr on the scores."""
    made = []
    real = training.make_optimizer

    def spy(params, name, lr, momentum):
        made.append((name, lr, [p.shape for p in params]))
        return real(params, name, lr, momentum)

    monkeypatch.setattr(training, "make_optimizer", spy)
    msg = _messages(strategy, "evaluate", personal_tuning=tuning)[0]
    model = build_model("cnn", 10, 1, 12)
    hidenseek.evaluate(msg, model, tiny_client_data(), RecordDict())
    (name, lr, shapes), = made
    weights = [p.shape for p in build_model("cnn", 10, 1, 12).parameters()]
    if tuning == "weights":
        assert (name, lr, shapes) == ("sgd", LocalSettings().personal_lr, weights)
    else:
        assert (name, lr) == ("adam", 0.05)
        assert sorted(shapes) == sorted(s for s in weights if len(s) > 1)  # one score a weight


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
    net = hidenseek.train_module(msg, build_model("cnn", 10, 1, 12), RecordDict(),
                                 lr=hidenseek_client.SCORE_LR)  # scores unscaled
    scores = torch.cat([m.scores.detach().flatten() for m in supermasks(net).values()])
    weights = torch.cat([frozen_weight(net, name).flatten() for name in supermasks(net)])
    kept = torch.as_tensor(strategy.prune)
    g = torch.as_tensor(np.where(strategy.signs, 1.0, -1.0), dtype=torch.float32)
    magnitude = torch.where(g > 0, 128 / 255, 0.5 / 255)  # ties keep g's sign, half a level
    torch.testing.assert_close(scores[kept], weights[kept].abs() * g * magnitude)


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
