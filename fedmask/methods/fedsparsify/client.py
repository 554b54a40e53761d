"""FedSparsify client hooks: masked FedAvg; in the local variant the client also
prunes and sends its mask."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.fedsparsify import wire
from fedmask.methods.masked import client as masked
from fedmask.methods.masked.wire import encode_client_mask
from fedmask.nn.pruning import flat_weights, keep_largest
from fedmask.nn.supermask import fold
from fedmask.wire.records import CONFIG, MASK_CODING, TrainModule, config_value

eval_module = masked.eval_module


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """Global variant: masked FedAvg. Local: the same module, encoded as the values
    of its `target-kept` largest weights plus that mask."""
    config = msg.content.config_records[CONFIG]
    if config_value(config, wire.VARIANT, str) != "local":
        return masked.train_module(msg, model, state, lr)
    net, mask = masked.masked_net(msg, model, state)

    def encode(trained: nn.Module) -> dict:
        plain = fold(trained)
        own = keep_largest(np.abs(flat_weights(plain)), mask, config_value(config,
                                                                           wire.TARGET_KEPT, int))
        return masked.weights_arrays(msg, plain, own,
                                     encode_client_mask(own, mask, config_value(config,
                                                                                MASK_CODING, str)))

    return masked.trainable(net, mask), encode
