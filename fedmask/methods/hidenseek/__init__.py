"""HideNseek: server-side SynFlow pruning of a seeded net, clients learn a sign
supermask, majority vote of the signs. Wire contract: :mod:`.wire`; client side:
:mod:`.client`; server side: :class:`strategies.hidenseek.HideNseek`."""

from fedmask.methods import Method
from fedmask.methods.hidenseek.wire import VOTES
from fedmask.nn.pruning import SCOPES
from fedmask.options import choice, in_range, positive

METHOD = Method(
    name="hidenseek",
    strategy="strategies.hidenseek:HideNseek",
    client="fedmask.methods.hidenseek.client",
    options={
        "synflow-iterations": positive(100, "HideNseek: SynFlow pruning iterations"),
        "prune-scope": choice("global", SCOPES,
                              "HideNseek: SynFlow threshold across layers or per layer"),
        "vote": choice("majority", VOTES, "HideNseek: only the majority signs go down, or "
                                          "with them the vote margins clients start from"),
        "vote-smoothing": in_range(0.5, 0.0, 1.0, hi_open=True,
                                   help="HideNseek: weight of the previous rounds' vote share "
                                        "in the server's share (0 = this round's only)"),
    },
    arguments=("density", "mask-coding", "synflow-iterations", "prune-scope",
               "personal-epochs", "vote", "vote-smoothing"),
    defaults={"optimizer": "adam", "lr": 0.01, "init": "kaiming-normal"},
    personalised=True,
)
