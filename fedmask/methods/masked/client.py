"""Client hooks of masked FedAvg (MPFL, SSFL, FedSparsify): train ``w * mask``.

The mask is a parametrisation (:class:`fedmask.nn.supermask.FixedMask`), so
pruned weights read as zero and get no gradient in any training loop; the
reply carries the kept values of the folded (plain) network.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from torch import nn

from fedmask.methods.masked import wire
from fedmask.nn.pruning import apply_flat_mask, prunable_names
from fedmask.nn.seeded import SeededNet
from fedmask.nn.supermask import FixedMask, fold
from fedmask.wire.records import CONFIG, TrainModule, attach_flat
from fedmask.wire.sparse import KEPT_VALUES, decode_sparse, encode_sparse


def masked_net(msg: Message, model: nn.Module, state: RecordDict
               ) -> tuple[nn.Module, np.ndarray]:
    """The global net and its mask: ``w0 * mask`` when only a mask came down,
    else the kept values sent, under the mask the node holds in `state`."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    record = wire.with_float32_values(msg.content.array_records[wire.WEIGHTS],
                                      wire.value_format(config))
    if KEPT_VALUES not in record:
        mask = wire.decode_mask_record(record, config)
    else:
        mask = wire.held_mask(msg, state)
        model.load_state_dict(decode_sparse(record, mask, model.state_dict(),
                                            prunable_names(model)))
    apply_flat_mask(model, mask)
    return model, mask


def trainable(net: nn.Module, mask: np.ndarray) -> nn.Module:
    """`net` with `mask` attached as a parametrisation of its prunable weights."""
    return attach_flat(net, lambda w, m: FixedMask(w, m), mask, freeze=False)


def weights_arrays(msg: Message, net: nn.Module, mask: np.ndarray,
                   arrays: dict[str, ArrayRecord] | None = None) -> dict[str, ArrayRecord]:
    """The reply to `msg`'s arrays: `net`'s values under `mask`, in the message's
    ``value-format`` (and `arrays`, if any)."""
    plain = fold(net)
    weights = encode_sparse(plain.state_dict(), mask, prunable_names(plain),
                            wire.value_format(msg.content.config_records[CONFIG]))
    return {wire.WEIGHTS: weights, **(arrays or {})}


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """The masked net, trainable (at the loop's own `lr`), and the encoder of its
    kept values."""
    del lr
    net, mask = masked_net(msg, model, state)
    return trainable(net, mask), lambda trained: weights_arrays(msg, trained, mask)


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global masked net (eval mode)."""
    return masked_net(msg, model, state)[0].eval()
