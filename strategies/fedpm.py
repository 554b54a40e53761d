"""FedPM server: Bayesian (Beta posterior) aggregation of sampled binary masks."""

from __future__ import annotations

import copy
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from torch import nn

from fedmask.methods.fedpm import wire
from fedmask.wire.bits import unpack_mask
from fedmask.wire.records import CONFIG
from strategies.seeded_mask import SeededMaskStrategy

POSTERIORS = ("mean", "mode")
EPS = 0.01  # the mode's theta stays in [EPS, 1 - EPS] (the authors' soft 0/1 bits)


class FedPM(SeededMaskStrategy):
    """Server side of FedPM (sampling and evaluation as Flower's FedAvg).

    Each position's keep probability comes from a Beta posterior
    ``alpha = 1 + sum_k w_k m_k``, ``beta = 1 + sum_k w_k (1 - m_k)`` with
    ``w_k = 1`` (or ``K n_k / sum_j n_j`` when `weighted_aggregation`), accumulated since
    the last prior reset: its mean, or (as the authors' public code) its mode, the
    share of masks keeping the position, mapped to ``[0.01, 0.99]``.

    Parameters
    ----------
    model : nn.Module
        Architecture shared with the clients; re-initialised in place from `seed`.
    seed, init : int, str
        Seed and init scheme of the frozen weights (``auto``: signed constant).
    mask_coding : {"packed", "entropy"}
        How clients code their sampled mask (entropy: against the global theta).
    input_shape : tuple[int, ...], optional
        Shape of one input example; when given, the model is checked against it.
    prior_reset : int
        Reset the posterior to Beta(1, 1) every `prior_reset` rounds (1: every
        round; 0: never).
    weighted_aggregation : bool
        Weight each client's mask by its number of training examples.
    posterior : {"mean", "mode"}
        Theta is the posterior's mean (the paper) or its clipped mode (the public code).
    theta_format : {"uint8", "float32"}
        How theta goes down (see ``fedmask.methods.fedpm.wire``).
    estimator : {"ste", "theta"}
        Clients' gradient estimator (``fedmask.nn.supermask.BernoulliSupermask``).
    eval_samples : int
        Sampled masks whose mean accuracy clients report next to the thresholded one.
    model_theta : bool
        The model file keeps theta (as sent down) instead of the thresholded mask.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    STATE = ("alpha", "beta", "wire_theta")  # checkpointed (fedmask.server.checkpoint)
    LEAN = {wire.THETA: "codes"}  # what nodes keep (uint8 theta codes are coded)

    METHOD = "fedpm"

    def __init__(self, *, model: nn.Module, seed: int = 0, init: str = "auto",
                 mask_coding: str = "entropy", input_shape: tuple[int, ...] | None = None,
                 prior_reset: int = 1, weighted_aggregation: bool = False,
                 posterior: str = "mode",
                 theta_format: str = "uint8", estimator: str = "ste", eval_samples: int = 3,
                 model_theta: bool = False, **kwargs: Any) -> None:
        if theta_format not in wire.THETA_DTYPES:
            raise ValueError(f"{wire.THETA_FORMAT}: {theta_format!r} is not one of "
                             f"{list(wire.THETA_DTYPES)}")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior: {posterior!r} is not one of {list(POSTERIORS)}")
        if prior_reset < 0:
            raise ValueError(f"prior-reset: must be >= 0, got {prior_reset}")
        super().__init__(model=model, seed=seed, init=init, mask_coding=mask_coding,
                         arrayrecord_key=wire.THETA, input_shape=input_shape, **kwargs)
        self.prior_reset, self.weighted_aggregation = prior_reset, weighted_aggregation
        self.posterior = posterior
        self.model_theta = model_theta
        self.theta_format, self.estimator, self.eval_samples = theta_format, estimator, eval_samples
        self.alpha = np.ones(self.num_params)
        self.beta = np.ones(self.num_params)
        self.wire_theta = wire.quantise(np.full(self.num_params, 0.5), theta_format)
        self._theta: tuple[np.ndarray, np.ndarray] | None = None  # (wire_theta, theta)

    def summary(self) -> None:
        """Log the set-up, then FedAvg's sampling summary."""
        log(INFO, "\t├──> FedPM: %d weights, seed %d, hash %s, prior reset every %s, "
            "theta down as %s, mask coding %s", self.num_params, self.net.seed,
            self.net.weight_hash, self.prior_reset or "never", self.theta_format,
            self.mask_coding)
        super().summary()

    @property
    def theta(self) -> np.ndarray:
        """The global keep probabilities clients hold (after quantisation); computed
        once per global state (every reply's decoding reads it)."""
        if self._theta is None or self._theta[0] is not self.wire_theta:
            self._theta = (self.wire_theta, wire.dequantise(self.wire_theta))
        return self._theta[1]

    def global_arrays(self) -> ArrayRecord:
        """The global theta as sent down."""
        return wire.encode_theta(self.wire_theta)

    def wire_config(self) -> dict[str, Any]:
        """Theta format, estimator and evaluation samples."""
        return {wire.THETA_FORMAT: self.theta_format, wire.ESTIMATOR: self.estimator,
                wire.EVAL_SAMPLES: self.eval_samples}

    def decode(self, msg: Message) -> np.ndarray:
        """The client's sampled mask (N bits, packed)."""
        return wire.decode_sample(msg, self.theta, self.mask_coding)

    def coded_bits(self, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sampled mask, coded against the global theta."""
        return unpack_mask(decoded, self.num_params), self.theta

    @property
    def mask_length(self) -> int:
        """N bits, one per prunable weight."""
        return self.num_params

    def mask_weight(self, num_examples: int) -> int:
        """n_k with `weighted_aggregation`, else 1: per position, the sum counts
        the (weighted) clients keeping it."""
        return num_examples if self.weighted_aggregation else 1

    def commit(self, server_round: int, total: np.ndarray, count: int, examples: int
               ) -> dict[str, float]:
        """Add the masks to the Beta posterior (reset first when due), each weighted
        ``count * n_k / examples`` (or 1); theta = the posterior mean or clipped mode."""
        ones = total * (count / examples) if self.weighted_aggregation else total
        zeros = count - ones
        if self.prior_reset and (server_round - 1) % self.prior_reset == 0:
            self.alpha, self.beta = np.add(ones, 1.0), np.add(zeros, 1.0)
        else:
            self.alpha += ones
            self.beta += zeros
        self.wire_theta = wire.quantise(self._estimate(), self.theta_format)
        return {}

    def _estimate(self) -> np.ndarray:
        """Theta from the posterior: its mean, or its mode mapped to [EPS, 1 - EPS]
        (computed in place: few N-long temporaries)."""
        total = self.alpha + self.beta
        if self.posterior == "mean":
            return np.divide(self.alpha, total, out=total)
        share = self.alpha - 1
        total -= 2
        share /= np.maximum(total, 1e-12, out=total)
        share *= 1 - 2 * EPS
        share += EPS
        return share

    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """The thresholded mask ``theta > 0.5`` of `arrays`, packed (N/8 bytes), or
        with `model_theta` theta itself as sent down."""
        config = self.config()
        if self.model_theta:
            return RecordDict({wire.THETA: arrays, CONFIG: config})
        theta = wire.decode_theta(arrays, config)
        config[wire.THETA_FORMAT] = wire.MASK_FORMAT
        return RecordDict({wire.THETA: wire.encode_thresholded(theta), CONFIG: config})

    @property
    def kept_fraction(self) -> float:
        """Every weight may be kept: FedPM's masks are not pruned to a density."""
        return 1.0

    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network (Bernoulli supermasks at the theta `arrays` carry;
        thresholded at 0.5 in eval mode)."""
        theta = wire.decode_theta(arrays, self.config(ConfigRecord()))
        return wire.mask_net(copy.deepcopy(self.model), theta, self.estimator)
