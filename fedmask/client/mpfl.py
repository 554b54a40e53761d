"""MPFL client: vote a pruning mask (phase 1), then train the masked net (phase 2)."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask import training
from fedmask.client.settings import LocalSettings
from fedmask.data import ClientData
from fedmask.protocol import CONFIG, MASK_CODING, NUM_EXAMPLES, reply
from fedmask.protocol import mpfl as wire
from fedmask.pruning import apply_flat_mask, prunable_names, prune_kept
from fedmask.seeded import SeededNet
from fedmask.sparse import decode_sparse, encode_sparse


def _masked_net(msg: Message, model: nn.Module, state: RecordDict | None
                ) -> tuple[nn.Module, np.ndarray]:
    """The global net and C: ``w0 * C`` in phase 1, the sent kept values in phase 2."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    if int(config[wire.PHASE]) == 1:
        mask = wire.decode_consensus(msg.content.array_records[wire.WEIGHTS], config)
    else:
        mask = wire.held_mask(msg, RecordDict() if state is None else state)
        weights = msg.content.array_records[wire.WEIGHTS]
        model.load_state_dict(decode_sparse(weights, mask, model.state_dict(),
                                            prunable_names(model)))
    apply_flat_mask(model, mask)
    return model, mask


def train(msg: Message, model: nn.Module, data: ClientData,
          state: RecordDict | None = None) -> Message:
    """Train ``w * C`` (pruned weights held at zero after every step); reply with
    the pruned-further mask (phase 1) or the kept values (phase 2)."""
    settings = LocalSettings.from_message(msg)
    config = msg.content.config_records[CONFIG]
    net, mask = _masked_net(msg, model, state)
    loss = settings.fit(net, data.train, settings.local_epochs,
                        after_step=lambda: apply_flat_mask(net, mask))
    metrics = {NUM_EXAMPLES: data.num_train, "train-loss": loss}
    if int(config[wire.PHASE]) == 1:
        own = prune_kept(net, mask, float(config[wire.PRUNE_RATE]),
                         str(config[wire.PRUNE_STRUCTURE]))
        return reply(msg, metrics, wire.encode_vote(own, mask, str(config[MASK_CODING])))
    weights = encode_sparse(net.state_dict(), mask, prunable_names(net))
    return reply(msg, metrics, {wire.WEIGHTS: weights})


def evaluate(msg: Message, model: nn.Module, data: ClientData,
             state: RecordDict | None = None) -> Message:
    """Local test accuracy of the global masked net."""
    net, _ = _masked_net(msg, model, state)
    return reply(msg, {NUM_EXAMPLES: data.num_test, **training.evaluate_metrics(net, data.test)})
