"""quickstart_fedmask: A Flower / PyTorch app."""

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedmask.client

from quickstart_fedmask.task import Net, load_data
from quickstart_fedmask.task import test as test_fn
from quickstart_fedmask.task import train as train_fn

# Flower ClientApp
app = ClientApp()


def _loaders(context: Context):
    """This node's partition of the data."""
    return load_data(context.node_config["partition-id"], context.node_config["num-partitions"],
                     context.run_config["batch-size"], context.run_config["data-path"],
                     context.run_config["train-limit"])


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""

    # Load the model and initialize it with the received weights
    model = fedmask.client.train_module(msg, Net(), context.state)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    # Load the data
    trainloader, _ = _loaders(context)

    # Call the training function
    train_loss = train_fn(
        model,
        trainloader,
        context.run_config["local-epochs"],
        msg.content["config"]["lr"],
        device,
        context.run_config["optimizer"],
    )

    # Construct and return reply Message
    metrics = {"train_loss": train_loss}
    return fedmask.client.train_reply(msg, model, len(trainloader.dataset), metrics)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on local data."""

    # Load the model and initialize it with the received weights
    model = fedmask.client.eval_module(msg, Net(), context.state)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    # Load the data
    _, valloader = _loaders(context)

    # Call the evaluation function
    eval_loss, eval_acc = test_fn(model, valloader, device)

    # Construct and return reply Message
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc,
               "num-examples": len(valloader.dataset)}
    metric_record = MetricRecord(metrics)
    content = RecordDict({"metrics": metric_record})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context):  # SSFL's saliency, before round 1
    return fedmask.client.query_reply(msg, Net(), _loaders(context)[0], context.state)
