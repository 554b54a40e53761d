"""MPFL client: vote a pruning mask (phase 1), then masked FedAvg (phase 2)."""

from __future__ import annotations

from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.masked import client as masked
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, MASK_CODING, NUM_EXAMPLES, reply
from fedmask.methods.mpfl import wire as wire
from fedmask.methods.masked.wire import PHASE, encode_client_mask
from fedmask.nn.pruning import prune_kept

evaluate = masked.evaluate


def train(msg: Message, model: nn.Module, data: ClientData,
          state: RecordDict | None = None) -> Message:
    """Phase 1: train ``w0 * C``, prune a further `prune-rate`, reply with that mask.
    Phase 2: masked FedAvg (:func:`fedmask.methods.masked.client.train`)."""
    config = msg.content.config_records[CONFIG]
    if int(config[PHASE]) != 1:
        return masked.train(msg, model, data, state)
    net, mask = masked.masked_net(msg, model, state)
    loss = masked.fit(msg, net, mask, data)
    own = prune_kept(net, mask, float(config[wire.PRUNE_RATE]), str(config[wire.PRUNE_STRUCTURE]))
    return reply(msg, {NUM_EXAMPLES: data.num_train, "train-loss": loss},
                 encode_client_mask(own, mask, str(config[MASK_CODING])))
