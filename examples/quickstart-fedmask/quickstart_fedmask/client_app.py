"""quickstart_fedmask: a Flower / PyTorch ClientApp that can run a fedmask method."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmask.client import fedpm, hidenseek  # fedmask: the client side of each method
from fedmask.data.datasets import ClientData
from quickstart_fedmask.task import Net, load_data
from quickstart_fedmask.task import test as test_fn
from quickstart_fedmask.task import train as train_fn

FEDMASK_CLIENTS = {"hidenseek": hidenseek, "fedpm": fedpm}

app = ClientApp()


def _data(context: Context) -> ClientData:
    """This node's loaders (partition from the node config, data path from either config)."""
    data_path = context.node_config.get("data-path") or context.run_config["data-path"]
    trainloader, valloader = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
        int(context.run_config["batch-size"]), str(data_path),
        int(context.run_config["train-limit"]))
    return ClientData(trainloader, valloader, len(trainloader.dataset), len(valloader.dataset))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    data = _data(context)
    method = context.run_config["strategy"]
    if method in FEDMASK_CLIENTS:  # fedmask: one call, the project's own model and data
        return FEDMASK_CLIENTS[method].train(msg, Net(), data)

    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train_loss = train_fn(model, data.train, int(context.run_config["local-epochs"]),
                          float(msg.content["config"]["lr"]))
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": data.num_train})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the model on local data."""
    data = _data(context)
    method = context.run_config["strategy"]
    if method in FEDMASK_CLIENTS:  # fedmask: one call
        return FEDMASK_CLIENTS[method].evaluate(msg, Net(), data)

    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    eval_loss, eval_acc = test_fn(model, data.test)
    metrics = MetricRecord({"eval_loss": eval_loss, "eval_acc": eval_acc,
                            "num-examples": data.num_test})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
