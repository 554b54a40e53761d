"""MPFL client hooks: vote a pruning mask (phase 1), then masked FedAvg (phase 2)."""

from __future__ import annotations

from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.masked import client as masked
from fedmask.methods.masked.wire import PHASE, encode_client_mask
from fedmask.methods.mpfl import wire
from fedmask.nn.pruning import prune_kept
from fedmask.nn.supermask import fold
from fedmask.wire.records import CONFIG, MASK_CODING, TrainModule, config_value

eval_module = masked.eval_module


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """Phase 1: ``w0 * C`` to train, encoded as the client's vote: C pruned by a
    further `prune-rate`. Phase 2: masked FedAvg."""
    config = msg.content.config_records[CONFIG]
    if config_value(config, PHASE, int) != 1:
        return masked.train_module(msg, model, state, lr)
    net, mask = masked.masked_net(msg, model, state)
    rate = config_value(config, wire.PRUNE_RATE, float)
    structure = config_value(config, wire.PRUNE_STRUCTURE, str)

    def encode(trained: nn.Module) -> dict:
        own = prune_kept(fold(trained), mask, rate, structure)
        return encode_client_mask(own, mask, config_value(config, MASK_CODING, str))

    return masked.trainable(net, mask), encode
