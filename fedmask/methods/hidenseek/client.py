"""HideNseek client hooks: a sign supermask over the seeded, server-pruned net."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from torch import nn

from fedmask.methods.hidenseek import wire
from fedmask.nn.seeded import SeededNet
from fedmask.wire.held import Context
from fedmask.wire.records import CONFIG, MASK_CODING, TrainModule


def _global_net(msg: Message, model: nn.Module) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """Rebuild the seeded weights, check the hash, attach P and the global signs
    (scaled by the vote margins where the message carries them)."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    record = msg.content.array_records[wire.MASKS]
    prune, signs = wire.decode_masks(record, config)
    margin = wire.decode_margin(record, signs.size)
    scale = str(config.get(wire.SCORE_SCALE, "weight"))
    return wire.sign_net(model, prune, signs, margin, scale), prune, signs


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


MEMORY = "hidenseek-scores"  # context.state: the node's last trained scores, by weight hash


def _remembered(state: RecordDict, weight_hash: str, num_kept: int) -> np.ndarray | None:
    """The node's last trained K scores over the seeded net `weight_hash`, if it holds them."""
    record = state.array_records.get(MEMORY)
    if record is None or weight_hash not in record:
        return None
    scores = record[weight_hash].numpy()
    return scores if scores.shape == (num_kept,) and scores.dtype == np.float32 else None


def train_module(msg: Message, model: nn.Module, state: RecordDict) -> TrainModule:
    """``w * P * sign(s)`` with trainable scores from the global signs, and the
    encoder of the reply: the K sign bits, packed or entropy-coded flips. With
    ``score-memory`` the scores start at the magnitudes this node last trained
    (kept in `state` by the encoder) where it holds them."""
    net, prune, global_signs = _global_net(msg, model)
    config = msg.content.config_records[CONFIG]
    coding = str(config.get(MASK_CODING, "packed"))
    memory = bool(config.get(wire.SCORE_MEMORY, False))
    weight_hash = SeededNet.from_config(config).weight_hash
    remembered = _remembered(state, weight_hash, global_signs.size) if memory else None
    if remembered is not None:
        wire.restart_scores(net, prune, global_signs, remembered)

    def encode(trained: nn.Module) -> dict[str, ArrayRecord]:
        if memory:
            state[MEMORY] = ArrayRecord({weight_hash: Array(wire.read_scores(trained, prune))})
        return wire.encode_signs(wire.read_signs(trained, prune), global_signs, coding)
    return net, encode


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global network ``w * P * g`` (eval mode)."""
    del state
    return _global_net(msg, model)[0].eval()
