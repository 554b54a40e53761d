"""HideNseek client: train a sign supermask over the seeded, server-pruned net."""

from __future__ import annotations

from flwr.app import Message
from torch import nn

from fedmask.nn import training
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, MASK_CODING, NUM_EXAMPLES, reply
from fedmask.methods.hidenseek import wire as wire
from fedmask.nn.seeded import SeededNet


def _global_net(msg: Message, model: nn.Module):  # noqa: ANN202
    """Rebuild the seeded weights, check the hash, attach P and the global signs."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    prune, signs = wire.decode_masks(msg.content.array_records[wire.MASKS], config)
    return wire.sign_net(model, prune, signs), prune, signs


def train(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Optimise the scores from the global signs; reply with K sign bits (coded)."""
    settings = LocalSettings.from_message(msg)
    net, prune, global_signs = _global_net(msg, model)
    loss = settings.fit(net, data.train, settings.local_epochs)
    coding = str(msg.content.config_records[CONFIG].get(MASK_CODING, "packed"))
    return reply(msg, {NUM_EXAMPLES: data.num_train, "train-loss": loss},
                 wire.encode_signs(wire.read_signs(net, prune), global_signs, coding))


def evaluate(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Local test accuracy of the global net, then personalised accuracy."""
    settings = LocalSettings.from_message(msg)
    net, _, _ = _global_net(msg, model)
    metrics = {NUM_EXAMPLES: data.num_test, **training.evaluate_metrics(net, data.test)}
    if settings.personal_epochs > 0:
        settings.fit(net, data.train, settings.personal_epochs)
        metrics["personal-accuracy"] = training.evaluate(net, data.test)[1]
    return reply(msg, metrics)
