"""FedPM client hooks: keep probabilities over the frozen seeded net, one sample up."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict
from torch import nn

from fedmask.methods.fedpm import wire
from fedmask.nn.seeded import SeededNet
from fedmask.nn.supermask import lr_ratio
from fedmask.wire.records import CONFIG, MASK_CODING, TrainModule

# The learning rate at which the scores are the logits themselves: at any other lr
# they are scaled by lr / SCORE_LR, so every loop moves the logits alike. FedPM's
# default Adam rate, so fedmask's own loop trains as tuned (chosen with
# benchmarks/optimizers.py --score-lrs; see the README).
SCORE_LR = 0.2


def _global_net(msg: Message, model: nn.Module, ratio: float = 1.0
                ) -> tuple[nn.Module, np.ndarray]:
    """Rebuild the seeded weights, check the hash, attach the global theta (scores
    scaled by `ratio`)."""
    config = msg.content.config_records[CONFIG]
    SeededNet.from_config(config).rebuild(model)
    theta = wire.decode_theta(msg.content.array_records[wire.THETA], config)
    estimator = str(config.get(wire.ESTIMATOR, "ste"))
    return wire.mask_net(model, theta, estimator, ratio), theta


def train_module(msg: Message, model: nn.Module, state: RecordDict, lr: float | None
                 ) -> TrainModule:
    """Bernoulli supermasks with trainable scores from the global theta (a fresh mask
    sampled every forward pass in training mode), and the encoder of the reply:
    one mask sampled from the trained probabilities. Scores are scaled for a loop
    at learning rate `lr`."""
    del state  # FedPM nodes hold nothing between rounds
    net, theta = _global_net(msg, model, lr_ratio(lr, SCORE_LR))
    coding = str(msg.content.config_records[CONFIG].get(MASK_CODING, "packed"))
    return net, lambda trained: wire.encode_sample(wire.sample_mask(trained), theta, coding)


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global network, thresholded mask ``theta > 0.5`` in eval mode (sampled
    masks in training mode or under :func:`fedmask.nn.supermask.fixed_samples`)."""
    del state
    return _global_net(msg, model)[0].eval()
