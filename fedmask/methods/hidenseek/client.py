"""HideNseek client hooks: a sign supermask over the seeded, server-pruned net."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.hidenseek import wire
from fedmask.nn.class_bias import class_stats, layer_bias
from fedmask.nn.seeded import SeededNet
from fedmask.nn.supermask import lr_ratio
from fedmask.wire.class_bias import CLASS_STATS, offset_of
from fedmask.wire.held import Context
from fedmask.wire.records import CONFIG, MASK_CODING, TrainModule

# The learning rate at which the scores are stored as they are (|w| g): at any other
# lr they are scaled by lr / SCORE_LR, so every loop moves them alike relative to
# their size. HideNseek's default Adam rate, so fedmask's own loop trains as tuned
# (chosen with benchmarks/optimizers.py --score-lrs; see the README).
SCORE_LR = 0.01


def _global_net(msg: Message, model: nn.Module, ratio: float = 1.0
                ) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """Rebuild the seeded weights, check the hash, attach P and the global signs
    (scaled by the vote margins where the message carries them), scores scaled by
    `ratio`."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    record = msg.content.array_records[wire.MASKS]
    prune, signs = wire.decode_masks(record, config)
    margin = wire.decode_margin(record, signs.size)
    return wire.sign_net(model, prune, signs, margin, ratio), prune, signs


_CONTEXTS: dict[str, Context] = {}  # weight hash -> context, of the last seeded net only


def downlink_context(msg: Message, model: nn.Module) -> Context:
    """The lean downlink's coding context, from the rebuilt seeded weights (once
    per seeded net: kept by its checked weight hash)."""
    net = SeededNet.from_config(msg.content.config_records[CONFIG])
    if net.weight_hash not in _CONTEXTS:
        net.rebuild(model)
        _CONTEXTS.clear()
        _CONTEXTS[net.weight_hash] = wire.downlink_context(model)
    return _CONTEXTS[net.weight_hash]


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """``w * P * sign(s)`` with trainable scores from the global signs (scaled for a
    loop at learning rate `lr`), and the encoder of the reply: the K sign bits,
    packed or entropy-coded flips."""
    del state  # HideNseek nodes hold nothing between rounds
    net, prune, global_signs = _global_net(msg, model, lr_ratio(lr, SCORE_LR))
    coding = str(msg.content.config_records[CONFIG].get(MASK_CODING, "packed"))
    return net, lambda trained: wire.encode_signs(wire.read_signs(trained, prune),
                                                  global_signs, coding)


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global network ``w * P * g`` (eval mode)."""
    del state
    return _global_net(msg, model)[0].eval()


def query(msg: Message, model: nn.Module, batches: Iterable[Any], state: RecordDict
          ) -> RecordDict:
    """The class report on the voted model (``class-bias-report = "voted"``): per
    class in `batches`, its examples and the mean softmax of the global network
    plus the offsets the message carries."""
    del state
    found = offset_of(msg)
    if found is None or found[1] is None:
        raise ValueError("query: a HideNseek query reports on the offsets it carries, and "
                         "this one carries none")
    layer, bias = found
    net = _global_net(msg, model)[0]
    stats = class_stats(net, batches, bias, layer_bias(net, layer).numel())
    return RecordDict({CLASS_STATS: stats.record()})
