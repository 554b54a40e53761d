"""FedSparsify: progressive magnitude pruning during FedAvg (global or local).
Wire contract: :mod:`.wire`; schedule: :mod:`.schedule`; client side:
:mod:`.client`; server side: :class:`strategies.fedsparsify.FedSparsify`."""

from fedmask.methods import Method
from fedmask.methods.fedsparsify.wire import VARIANTS
from fedmask.options import Option, choice, flag, positive

METHOD = Method(
    name="fedsparsify",
    strategy="strategies.fedsparsify:FedSparsify",
    client="fedmask.methods.fedsparsify.client",
    options={
        "fedsparsify-variant": choice("global", VARIANTS,
                                      "FedSparsify: the server prunes, or every client"),
        "final-sparsity": Option(0.9, lambda v: 0.0 <= v < 1.0, "in [0.0, 1.0)",
                                 "FedSparsify: fraction pruned after the last round"),
        "prune-start": positive(1, "FedSparsify: first pruning round of the schedule"),
        "prune-every": positive(1, "FedSparsify: rounds between pruning rounds"),
        "nnz-average": flag(False, "FedSparsify local: average a kept position only over "
                                   "the clients that kept it"),
    },
    arguments=("model-value-format", "value-format", "mask-coding", "num-server-rounds",
               "fedsparsify-variant",
               "final-sparsity", "prune-start", "prune-every", "nnz-average"),
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal"},
    stateful=True,
)
