"""FedPM: a Bernoulli supermask over frozen signed-constant weights, Beta-posterior
aggregation. Wire contract: :mod:`.wire`; client side: :mod:`.client`; server
side: :class:`strategies.fedpm.FedPM`."""

from fedmask.methods import Method
from fedmask.methods.fedpm.wire import THETA_DTYPES
from fedmask.nn.supermask import ESTIMATORS
from fedmask.options import choice, flag, non_negative

METHOD = Method(
    name="fedpm",
    strategy="strategies.fedpm:FedPM",
    client="fedmask.methods.fedpm.client",
    options={
        "estimator": choice("ste", ESTIMATORS,
            help=("FedPM: gradient of the scores; `ste`: dL/dm * sigmoid'(s) (METHODS.md's "
                  "decision), `theta`: dL/dm * theta * sigmoid'(s) (FedPM's public code)")),
        "prior-reset": non_negative(1,
            help=("FedPM: reset the Beta posterior to Beta(1, 1) every this many rounds (0 = "
                  "never)")),
        "posterior": choice("mode", ("mean", "mode"),
            help=("FedPM: theta = the Beta posterior's mode, i.e. the share of masks keeping a "
                  "weight since the last reset, mapped to [0.01, 0.99] (the public code; chosen "
                  "by the sweep), or its mean (the paper, METHODS.md's decision)")),
        "weighted-aggregation": flag(False,
            help="FedPM: weight each client's mask by its training examples in the posterior"),
        "theta-format": choice("uint8", THETA_DTYPES,
            help=("FedPM: global probabilities sent down as 8-bit codes (`(q + 1/2) / 256`) or "
                  "float32")),
        "eval-samples": non_negative(3,
            help=("FedPM: also report the mean accuracy over this many sampled masks (central and"
                  " client-side)")),
        "model-theta": flag(False,
            help=("FedPM: the model file keeps theta as sent down (8-bit codes, N bytes) instead "
                  "of the thresholded mask (N bits)")),
    },
    arguments=("mask-coding", "estimator", "prior-reset", "weighted-aggregation", "posterior",
               "theta-format", "eval-samples", "model-theta"),
    defaults={"optimizer": "adam", "lr": 0.2, "init": "signed-constant", "loss": "cross-entropy"},
)
