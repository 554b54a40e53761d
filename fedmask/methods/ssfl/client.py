"""SSFL client: SNIP saliency of the seeded net on local data, then masked FedAvg."""

from __future__ import annotations

import itertools

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.masked import client as masked
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, NUM_EXAMPLES, reply
from fedmask.methods.ssfl import wire as wire
from fedmask.nn.pruning import prunable_names, snip_scores
from fedmask.nn.seeded import SeededNet

train, evaluate = masked.train, masked.evaluate


def query(msg: Message, model: nn.Module, data: ClientData,
          state: RecordDict | None = None) -> Message:
    """SNIP saliency ``|g * w|`` of the seeded net on `saliency-batches` local batches
    (no node state needed: `state` is accepted like the other handlers')."""
    del state
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    scores = snip_scores(model, itertools.islice(data.train, int(config[wire.SALIENCY_BATCHES])))
    saliency = np.concatenate([scores[n].detach().cpu().numpy().reshape(-1)
                               for n in prunable_names(model)])
    return reply(msg, {NUM_EXAMPLES: data.num_train},
                 wire.encode_saliency(saliency, str(config[wire.SALIENCY_FORMAT])))
