"""SSFL: clients' SNIP saliency aggregated into one global mask, then sparse FedAvg.
Wire contract: :mod:`.wire`; client side: :mod:`.client`; server side:
:class:`strategies.ssfl.SSFL`."""

from fedmask.methods import Method
from fedmask.methods.ssfl.wire import SALIENCY_DTYPES
from fedmask.options import choice, flag, positive

METHOD = Method(
    name="ssfl",
    strategy="strategies.ssfl:SSFL",
    client="fedmask.methods.ssfl.client",
    options={
        "saliency-batches": positive(1,
            help="SSFL: local batches each client's SNIP gradient sums over"),
        "saliency-format": choice("float16", SALIENCY_DTYPES,
            help="SSFL: precision of the saliency sent up"),
        "saliency-weighted": flag(True,
            help=("SSFL: weight each client's saliency by its examples (`false`: the public "
                  "code's plain mean)")),
    },
    arguments=("model-value-format", "value-format", "density", "saliency-batches",
               "saliency-format",
               "saliency-weighted"),
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal", "loss": "cross-entropy"},
    stateful=True,
)
