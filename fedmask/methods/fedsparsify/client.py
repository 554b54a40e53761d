"""FedSparsify client: masked FedAvg; in the local variant it also prunes and sends its mask."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.masked import client as masked
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, MASK_CODING
from fedmask.methods.fedsparsify import wire as wire
from fedmask.methods.masked.wire import encode_client_mask
from fedmask.nn.pruning import flat_weights, keep_largest

evaluate = masked.evaluate


def train(msg: Message, model: nn.Module, data: ClientData,
          state: RecordDict | None = None) -> Message:
    """Global variant: masked FedAvg (:func:`fedmask.methods.masked.client.train`). Local:
    train under the global mask, keep the `target-kept` largest weights, reply
    with their values and this mask."""
    config = msg.content.config_records[CONFIG]
    if str(config[wire.VARIANT]) != "local":
        return masked.train(msg, model, data, state)
    net, mask = masked.masked_net(msg, model, state)
    loss = masked.fit(msg, net, mask, data)
    own = keep_largest(np.abs(flat_weights(net)), mask, int(config[wire.TARGET_KEPT]))
    return masked.weights_reply(msg, net, own, loss, data,
                                encode_client_mask(own, mask, str(config[MASK_CODING])))
