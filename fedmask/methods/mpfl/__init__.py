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
                               help="MPFL: fraction of its kept weights a client prunes "
                                    "per vote round"),
        "prune-structure": choice("unstructured", PRUNE_STRUCTURES,
                                  "MPFL: prune by weight magnitude or whole filters"),
    },
    arguments=("model-value-format", "value-format", "density", "mask-coding", "prune-rate",
               "prune-structure"),
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal"},
    stateful=True,
)
