"""HideNseek: server-side SynFlow pruning of a seeded net, clients learn a sign
supermask, majority vote of the signs. Wire contract: :mod:`.wire`; client side:
:mod:`.client`; server side: :class:`strategies.hidenseek.HideNseek`."""

from fedmask.methods import Method
from fedmask.nn.pruning import SCOPES
from fedmask.options import choice, non_negative, positive

METHOD = Method(
    name="hidenseek",
    strategy="strategies.hidenseek:HideNseek",
    client="fedmask.methods.hidenseek.client",
    options={
        "synflow-iterations": positive(100, "HideNseek: SynFlow pruning iterations"),
        "prune-scope": choice("global", SCOPES,
                              "HideNseek: SynFlow threshold across layers or per layer"),
        "personal-epochs": non_negative(1, "HideNseek: fine-tuning epochs for personalised "
                                           "accuracy (0 = off)"),
    },
    arguments=("density", "mask-coding", "synflow-iterations", "prune-scope",
               "personal-epochs"),
    defaults={"optimizer": "adam", "lr": 0.01, "init": "kaiming-normal"},
    personalised=True,
)
