"""fedmask's FedAvg is Flower's FedAvg on the user's own model: the same initial
arrays, and the same global arrays after every round when every node trains."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

import strategies
from fedmask.nn.models import build_model

from conftest import FakeGrid, _metadata

NODES = [11, 12, 13]


def _users_net() -> torch.nn.Module:
    """The user's model with its own (PyTorch default) initialisation."""
    torch.manual_seed(5)
    return build_model("cnn", 10, 1, 12)


class PlainClientsGrid(FakeGrid):
    """Nodes that train as a plain Flower ClientApp does: load the arrays, a few SGD
    steps on their own seeded data, reply the arrays and ``num-examples``."""

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            model = build_model("cnn", 10, 1, 12)
            model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
            gen = torch.Generator().manual_seed(node)
            x = torch.randn(8 * node % 40 + 8, 1, 12, 12, generator=gen)
            y = torch.randint(0, 10, (len(x),), generator=gen)
            optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            for _ in range(3):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimiser.step()
            content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "metrics": MetricRecord({"num-examples": len(x)})})
            replies.append(make_message(_metadata(node, msg.metadata.message_type),
                                        content=content))
        return replies


@pytest.mark.integration  # a whole federated run, in-process
def test_fedavg_starts_and_trains_as_flowers_own():
    ours = strategies.FedAvg(model=_users_net(), fraction_train=1.0, fraction_evaluate=0.0,
                             min_available_nodes=len(NODES))
    start = ArrayRecord(_users_net().state_dict())
    initial = ours.initial_arrays()
    assert all(np.array_equal(initial[k].numpy(), start[k].numpy()) for k in start)
    flower = FlowerFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                          min_available_nodes=len(NODES))
    got, want = {}, {}  # round -> global arrays, as each start() reaches it
    ours.start(PlainClientsGrid(NODES), num_rounds=3, evaluate_fn=_keep(got))
    flower.start(PlainClientsGrid(NODES), start, num_rounds=3, evaluate_fn=_keep(want))
    assert list(got) == list(want) == [0, 1, 2, 3]
    for server_round in (1, 2, 3):
        ours_now, flowers_now = got[server_round], want[server_round]
        assert list(ours_now) == list(flowers_now)
        assert max(np.abs(ours_now[k] - flowers_now[k]).max() for k in flowers_now) <= 1e-5
        assert any(not np.array_equal(ours_now[k], start[k].numpy()) for k in flowers_now)


def _keep(into: dict):
    """An evaluate_fn that keeps each round's global arrays (as numpy) in `into`."""
    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        into[server_round] = {k: arrays[k].numpy().copy() for k in arrays}
        return MetricRecord({"kept": 1})
    return evaluate
