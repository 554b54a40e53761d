"""Dense FedAvg, the reference for accuracy and bytes: Flower's FedAvg with every
reply validated. Client side: :mod:`.client`; server side:
:class:`strategies.fedavg.FedAvg`."""

from fedmask.methods import Method

METHOD = Method(
    name="fedavg",
    strategy="strategies.fedavg:FedAvg",
    client="fedmask.methods.fedavg.client",
    defaults={"optimizer": "sgd", "lr": 0.02, "init": "kaiming-normal", "loss": "cross-entropy"},
    personalised=True,  # FedAvg-FT: the global model fine-tuned on each client
)
