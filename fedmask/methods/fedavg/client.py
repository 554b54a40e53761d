"""Dense FedAvg client hooks (the reference for accuracy and bytes)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, RecordDict
from torch import nn

from fedmask.wire.records import TrainModule

ARRAYS = "arrays"  # Flower FedAvg's default ArrayRecord key


def _load(msg: Message, model: nn.Module) -> nn.Module:
    model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    return model


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """The global model, all weights trainable (at the loop's own `lr`), encoded as
    its float32 state dict."""
    del state, lr
    return _load(msg, model), lambda trained: {ARRAYS: ArrayRecord(trained.state_dict())}


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global model (eval mode)."""
    del state
    return _load(msg, model).eval()
