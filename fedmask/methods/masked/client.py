"""Client side of masked FedAvg (MPFL, SSFL): train ``w * mask`` with pruned weights at zero."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from torch import nn

from fedmask.nn import training
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import ClientData
from fedmask.wire.records import CONFIG, NUM_EXAMPLES, reply
from fedmask.methods.masked import wire as wire
from fedmask.nn.pruning import apply_flat_mask, prunable_names
from fedmask.nn.seeded import SeededNet
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse, encode_sparse


def masked_net(msg: Message, model: nn.Module, state: RecordDict | None
               ) -> tuple[nn.Module, np.ndarray]:
    """The global net and its mask: ``w0 * mask`` when only a mask came down,
    else the kept values sent, under the mask the node holds."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    record = msg.content.array_records[wire.WEIGHTS]
    if KEPT_VALUES not in record:
        mask = wire.decode_mask_record(record, config)
    else:
        mask = wire.held_mask(msg, RecordDict() if state is None else state)
        model.load_state_dict(decode_sparse(record, mask, model.state_dict(),
                                            prunable_names(model)))
    apply_flat_mask(model, mask)
    return model, mask


def fit(msg: Message, net: nn.Module, mask: np.ndarray, data: ClientData) -> float:
    """Train `net` locally with the pruned weights re-zeroed after every step."""
    settings = LocalSettings.from_message(msg)
    return settings.fit(net, data.train, settings.local_epochs,
                        after_step=lambda: apply_flat_mask(net, mask))


def train(msg: Message, model: nn.Module, data: ClientData,
          state: RecordDict | None = None) -> Message:
    """Train the masked net; reply with its kept values (and dense small tensors)."""
    net, mask = masked_net(msg, model, state)
    loss = fit(msg, net, mask, data)
    return weights_reply(msg, net, mask, loss, data)


def weights_reply(msg: Message, net: nn.Module, mask: np.ndarray, loss: float,
                  data: ClientData, arrays: dict[str, ArrayRecord] | None = None) -> Message:
    """The train reply: `net`'s values under `mask` (and `arrays`, if any)."""
    weights = encode_sparse(net.state_dict(), mask, prunable_names(net))
    return reply(msg, {NUM_EXAMPLES: data.num_train, "train-loss": loss},
                 {wire.WEIGHTS: weights, **(arrays or {})})


def evaluate(msg: Message, model: nn.Module, data: ClientData,
             state: RecordDict | None = None) -> Message:
    """Local test accuracy of the global masked net."""
    net, _ = masked_net(msg, model, state)
    return reply(msg, {NUM_EXAMPLES: data.num_test, **training.evaluate_metrics(net, data.test)})
