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
            help=("FedSparsify: the server prunes the aggregated model, or every client prunes "
                  "its own and the server merges by majority")),
        "final-sparsity": Option(0.9, lambda v: 0.0 <= v < 1.0, "in [0.0, 1.0)",
            help="FedSparsify: fraction of prunable weights pruned after the last round"),
        "prune-start": positive(1,
            help=("FedSparsify: first pruning round `t0` of the cubic schedule (its sparsity is "
                  "0)")),
        "prune-every": positive(1,
            help="FedSparsify: rounds between pruning rounds (the last round always prunes)"),
        "nnz-average": flag(False,
            help=("FedSparsify `local`: average a kept position only over the clients that kept "
                  "it (default: over all, pruned = 0)")),
    },
    arguments=("model-value-format", "value-format", "mask-coding", "num-server-rounds",
               "fedsparsify-variant",
               "final-sparsity", "prune-start", "prune-every", "nnz-average"),
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal", "loss": "cross-entropy"},
    stateful=True,
)
