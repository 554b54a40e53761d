"""FedPM client: train keep probabilities over the frozen seeded net, send one sample."""

from __future__ import annotations

import numpy as np
from flwr.app import Message
from torch import nn

from fedmask.nn import training
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, MASK_CODING, NUM_EXAMPLES, reply
from fedmask.methods.fedpm import wire as wire
from fedmask.nn.seeded import SeededNet


def _global_net(msg: Message, model: nn.Module) -> tuple[nn.Module, np.ndarray]:
    """Rebuild the seeded weights, check the hash, attach the global theta."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    theta = wire.decode_theta(msg.content.array_records[wire.THETA], config)
    return wire.mask_net(model, theta, str(config.get(wire.ESTIMATOR, "ste"))), theta


def train(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Train the scores from the global theta; reply with one sampled mask."""
    settings = LocalSettings.from_message(msg)
    net, theta = _global_net(msg, model)
    loss = settings.fit(net, data.train, settings.local_epochs)
    coding = str(msg.content.config_records[CONFIG].get(MASK_CODING, "packed"))
    return reply(msg, {NUM_EXAMPLES: data.num_train, "train-loss": loss},
                 wire.encode_sample(wire.sample_mask(net), theta, coding))


def evaluate(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Local test accuracy of the thresholded global mask and of sampled masks."""
    net, _ = _global_net(msg, model)
    samples = int(msg.content.config_records[CONFIG].get(wire.EVAL_SAMPLES, 0))
    metrics = training.evaluate_metrics(net, data.test, samples)
    return reply(msg, {NUM_EXAMPLES: data.num_test, **metrics})
