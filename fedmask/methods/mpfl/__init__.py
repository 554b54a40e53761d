"""MPFL: clients vote pruning masks, a consensus mask, then masked FedAvg. Wire
contract: :mod:`.wire`; client side: :mod:`.client`; server side:
:class:`strategies.mpfl.MPFL`."""

from fedmask.methods import Method
from fedmask.nn.pruning import PRUNE_STRUCTURES
from fedmask.options import choice, in_range

METHOD = Method(
    name="mpfl",
    strategy="strategies.mpfl:MPFL",
    client="fedmask.methods.mpfl.client",
    options={
        "prune-rate": in_range(0.2, 0.0, 1.0, lo_open=True,
            help=("MPFL: fraction of its kept weights each client prunes per vote round; the "
                  "consensus density after vote round `i` is `(1 - prune-rate)^i` until `density`"
                  " (so `ceil(log d / log(1 - p))` vote rounds, 8 for d = 0.2)")),
        "prune-structure": choice("unstructured", PRUNE_STRUCTURES,
            help="MPFL: clients prune by weight magnitude, or whole output filters by L2 norm"),
    },
    arguments=("model-value-format", "value-format", "density", "mask-coding", "prune-rate",
               "prune-structure"),
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal", "loss": "cross-entropy"},
    stateful=True,
)
