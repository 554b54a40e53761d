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
        "estimator": choice("ste", ESTIMATORS, "FedPM: gradient estimator of the scores"),
        "prior-reset": non_negative(1, "FedPM: reset the Beta posterior every this many "
                                       "rounds (0 = never)"),
        "posterior": choice("mode", ("mean", "mode"), "FedPM: theta = the Beta posterior's "
                            "mean, or its mode clipped to [0.01, 0.99] (public code)"),
        "weighted-aggregation": flag(False, "FedPM: weight each mask by its client's examples"),
        "theta-format": choice("uint8", THETA_DTYPES, "FedPM: theta down as 8-bit codes "
                                                      "or float32"),
        "eval-samples": non_negative(3, "FedPM: also report the mean accuracy over this many "
                                        "sampled masks"),
        "model-theta": flag(False, "FedPM: the model file keeps theta, not the thresholded "
                                   "mask"),
    },
    arguments=("mask-coding", "estimator", "prior-reset", "weighted-aggregation", "posterior",
               "theta-format", "eval-samples", "model-theta"),
    defaults={"optimizer": "adam", "lr": 0.2, "init": "signed-constant"},
)
