"""Dense FedAvg client (the reference for accuracy and bytes)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message
from torch import nn

from fedmask.nn import training
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import ClientData
from fedmask.wire.records import NUM_EXAMPLES, reply

ARRAYS = "arrays"  # Flower FedAvg's default ArrayRecord key


def _load(msg: Message, model: nn.Module) -> nn.Module:
    model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    return model


def train(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Train all weights locally; reply with the full float32 state dict."""
    settings = LocalSettings.from_message(msg)
    model = _load(msg, model)
    loss = settings.fit(model, data.train, settings.local_epochs)
    return reply(msg, {NUM_EXAMPLES: data.num_train, "train-loss": loss},
                 {ARRAYS: ArrayRecord(model.state_dict())})


def evaluate(msg: Message, model: nn.Module, data: ClientData) -> Message:
    """Accuracy of the global model on the local test split."""
    loss, accuracy = training.evaluate(_load(msg, model), data.test)
    return reply(msg, {NUM_EXAMPLES: data.num_test, "loss": loss, "accuracy": accuracy})
