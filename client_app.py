"""fedmask ClientApp: the same code in simulation and on SuperNodes."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmask.client.deadline import answer_by_deadline
from fedmask.client.node import handle

app = ClientApp(mods=[answer_by_deadline])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training for the configured method."""
    return handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Local (and personalised) evaluation for the configured method."""
    return handle(msg, context, "evaluate")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """A one-off query of the configured method (SSFL: saliency before round 1)."""
    return handle(msg, context, "query")
