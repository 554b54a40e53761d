"""HideNseek: server-side SynFlow pruning of a seeded net, clients learn a sign
supermask, majority vote of the signs. Wire contract: :mod:`.wire`; client side:
:mod:`.client`; server side: :class:`strategies.hidenseek.HideNseek`."""

from fedmask.methods import Method
from fedmask.methods.hidenseek.wire import VOTES
from fedmask.nn.pruning import SCOPES
from fedmask.options import choice, in_range, positive
from fedmask.wire.class_bias import CLASS_BIAS_REPORTS, CLASS_BIASES

METHOD = Method(
    name="hidenseek",
    strategy="strategies.hidenseek:HideNseek",
    client="fedmask.methods.hidenseek.client",
    options={
        "synflow-iterations": positive(100,
            help="HideNseek: SynFlow pruning iterations"),
        "prune-scope": choice("global", SCOPES,
            help="HideNseek: SynFlow threshold across layers or per layer"),
        "vote": choice("majority", VOTES,
            help=("HideNseek: only the global signs g go down (1 bit per kept weight), or with "
                  "them the vote margin |2p - 1| of the share p voting +1 (8 bits more), and "
                  "clients start from the scores |w| (2p - 1) (METHODS.md's option)")),
        "vote-smoothing": in_range(0.5, 0.0, 1.0, hi_open=True,
            help=("HideNseek: from round 2 the server's vote share is `beta * previous + (1 - "
                  "beta) * this round's`, g its majority (0 = this round's votes alone, the "
                  "paper's rule); 0.5 keeps the global signs from wandering under label skew (see"
                  " \"HideNseek under label skew\")")),
        "class-bias": choice("auto", CLASS_BIASES,
            help=("HideNseek: `federated` learns one logit offset per class on the server from "
                  "the clients' class statistics (the mean softmax of each class they hold, at "
                  "the model they received) and keeps it in the output layer's bias, which the "
                  "model must have (fedmask's own models gain one; a model without fails at "
                  "start); under label skew the signs alone leave the classes' levels off (see "
                  "\"Shards: what holds the runs back\"). `none`: the paper's network, signs "
                  "only. `auto`: `federated` where the output layer has a bias, else `none`, "
                  "logged at start")),
        "class-bias-lr": positive(3.0,
            help="HideNseek: the server's step size on the per-class offsets"),
        "class-bias-report": choice("train", CLASS_BIAS_REPORTS,
            help=("HideNseek: where the class statistics of `class-bias` are taken: `train`, "
                  "in the train replies, at the model the round started from (the offsets "
                  "fit the signs of one vote before); `voted`, after the vote, in one more "
                  "exchange a round: the nodes whose replies were taken get the voted model "
                  "in a query message and answer with the statistics at it (a ClientApp of "
                  "your own answers query messages with fedmask.client.query_reply)")),
    },
    arguments=("density", "mask-coding", "synflow-iterations", "prune-scope",
               "personal-epochs", "personal-tuning", "personal-lr", "vote", "vote-smoothing",
               "class-bias", "class-bias-lr", "class-bias-report"),
    defaults={"optimizer": "adam", "lr": 0.01, "init": "kaiming-normal", "loss": "balanced"},
    personalised=True,
)
