"""SSFL client hooks: SNIP saliency of the seeded net on local data (the query
before round 1), then masked FedAvg."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from torch import Tensor, nn

from fedmask.methods.masked import client as masked
from fedmask.methods.masked import wire as masked_wire
from fedmask.methods.ssfl import wire
from fedmask.nn.pruning import prunable_names, snip_scores
from fedmask.nn.seeded import SeededNet
from fedmask.wire.records import CONFIG, config_value

train_module, eval_module = masked.train_module, masked.eval_module


def query(msg: Message, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
          state: RecordDict) -> dict[str, ArrayRecord]:
    """SNIP saliency ``|g * w|`` of the start ``w0`` on the first `saliency-batches`
    ``(inputs, targets)`` batches; ``w0`` is rebuilt from the seed, or loaded from
    the message when it carries it (``init="model"``)."""
    config = msg.content.config_records[CONFIG]
    if masked_wire.WEIGHTS in msg.content.array_records:
        model = masked.masked_net(msg, model, state)[0]
    else:
        SeededNet.from_config(config).rebuild(model)
    scores = snip_scores(model, itertools.islice(batches, config_value(config,
                                                                       wire.SALIENCY_BATCHES, int)))
    saliency = np.concatenate([scores[n].detach().cpu().numpy().reshape(-1)
                               for n in prunable_names(model)])
    return wire.encode_saliency(saliency, config_value(config, wire.SALIENCY_FORMAT, str))
