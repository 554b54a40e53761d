"""The example Flower project (examples/quickstart-fedmask): a project in Flower's
quickstart conventions (its own Net, dict-batch loaders, train and test, its own
torch.save) switched between every fedmask method."""

import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message.message import make_message

import strategies
from fedmask.launch import run_simulation
from fedmask.methods import REGISTRY
from fedmask.nn import training
from fedmask.nn.model_file import load_model
from fedmask.nn.models import num_prunable
from fedmask.server.accounting import message_bytes

from conftest import _metadata
from quickstart_twin import EXAMPLE, switched_project

sys.path.insert(0, str(EXAMPLE))
from quickstart_fedmask import client_app, task  # noqa: E402 - the example's package

METHODS = list(REGISTRY)
RUN = {"fraction-evaluate": 1.0, "batch-size": 32, "local-epochs": 1, "learning-rate": 0.1,
       "optimizer": "sgd", "out-dir": ""}  # data: $QUICKSTART_DATA, 600 images a node (conftest)
ROUNDS = {"mpfl": 6}  # MPFL votes 4 rounds (density 0.5, prune rate 0.2) before it trains
# The methods that train the Net's float weights do so at lr 0.05 for 3 local epochs: at
# the project's lr 0.1 with momentum 0.9 this LeNet sometimes stalls whatever the method
# (measured in the example, 8 runs of 3 rounds: FedAvg 0.519 +- 0.128 with one run at
# 0.21, SSFL 0.487 +- 0.143 and one CI run at 0.20), and with one epoch (19 steps) a
# round still sometimes stalls at lr 0.05 (one CI run of MPFL ended at 0.20: its first
# masked-FedAvg round, round 5, had stayed at 0.18). With 3 epochs, measured in the
# example: FedAvg 0.70-0.74 after 3 rounds (3 runs), SSFL 0.71-0.72 (2 runs), MPFL
# 0.63-0.67 after round 5 and 0.70-0.74 after round 6 (5 runs). FedSparsify prunes to
# 90% sparsity by round 3, so its last accuracy is that of a freshly pruned net:
# 0.54-0.71 with 3 epochs at lr 0.1 (measured, 10 runs), where one CI run still stalled.
WEIGHTS = {"learning-rate": 0.05, "local-epochs": 3}
SETTINGS = {"fedavg": WEIGHTS, "mpfl": WEIGHTS, "ssfl": WEIGHTS, "fedsparsify": WEIGHTS}
# The mask methods train their scores under the project's own SGD (momentum 0.9, lr 0.1)
# or Adam (lr 0.001). Measured after 3 rounds (benchmarks/example_loops.py, 3 runs, with
# SGD's momentum on the scores bias-corrected): HideNseek 0.608 +- 0.019 (SGD), 0.625 +-
# 0.007 (Adam); FedPM 0.599 +- 0.031 (SGD), 0.549 +- 0.044 (Adam), and 0.502 +- 0.036
# and 0.535 +- 0.075 (Adam) in earlier runs. The bounds sit about three deviations
# below (the 0.5 where that allows it).
SGD_ACCURACY = {"hidenseek": 0.5, "fedpm": 0.45}
ADAM_ACCURACY = {"hidenseek": 0.5, "fedpm": 0.3}


def framing(reply: Message) -> int:
    """Bound on Flower's bytes around a reply's payload: message header and object
    tree, and each array's npy header and tree entry."""
    arrays = sum(len(record) for record in reply.content.array_records.values())
    return 1600 + 700 * arrays


@pytest.mark.parametrize("method", METHODS)
def test_example_runs_every_method_and_saves_a_plain_model(superlink, tmp_path, method):
    rounds = ROUNDS.get(method, 3)
    config = {**RUN, "strategy": method, "num-server-rounds": rounds, "out-dir": str(tmp_path),
              **SETTINGS.get(method, {})}
    project = switched_project(tmp_path / "project")  # the README's diffs, applied
    results = run_simulation(superlink, config, 2, app=project, timeout=900)["rounds"]
    assert [r["round"] for r in results] == list(range(rounds + 1))
    assert results[-1]["accuracy"] > SGD_ACCURACY.get(method, 0.3)  # chance is 0.1
    log = (tmp_path / "run.log").read_text()
    assert "dropping reply" not in log and " failed: " not in log
    assert [f"round {r}: 2 valid replies, 0 dropped" in log for r in range(1, rounds + 1)] \
        == [True] * rounds
    model = task.Net()  # the example's own torch.save, loaded into a fresh Net
    model.load_state_dict(torch.load(tmp_path / "final_model.pt"))
    _, accuracy = task.test(model, task.load_centralized_dataset(), torch.device("cpu"))
    assert accuracy == results[-1]["accuracy"]


@pytest.mark.parametrize("method", list(ADAM_ACCURACY))
def test_example_trains_the_mask_methods_with_adam(superlink, tmp_path, method):
    config = {**RUN, "strategy": method, "num-server-rounds": 3, "out-dir": str(tmp_path),
              "optimizer": "adam", "learning-rate": 0.001}
    project = switched_project(tmp_path / "project")
    results = run_simulation(superlink, config, 2, app=project, timeout=900)["rounds"]
    assert results[-1]["accuracy"] > ADAM_ACCURACY[method]


class ExampleGrid:
    """Two nodes answered in-process by the example's own ClientApp functions, as
    Flower would (an exception becomes an error reply); records every reply's size."""

    def __init__(self) -> None:
        self.states = {1: RecordDict(), 2: RecordDict()}
        self.sizes: list[tuple[str, int, int]] = []  # kind, bytes, framing bound
        self.errors: list[tuple[int, str]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.states)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            msg.metadata.__dict__["_message_id"] = f"m{node}-{len(self.sizes)}"
            context = Context(1, node, {"partition-id": node - 1, "num-partitions": 2},
                              self.states[node], {**RUN, "num-server-rounds": 1})
            handler = getattr(client_app, kind)
            try:
                reply = make_message(_metadata(node, kind), content=handler(msg, context).content)
            except Exception as err:  # noqa: BLE001 - Flower turns it into an error reply
                self.errors.append((node, str(err)))
                reply = make_message(_metadata(node, kind), error=Error(1, str(err)))
            self.sizes.append((kind, message_bytes(reply),
                               0 if reply.has_error() else framing(reply)))
            replies.append(reply)
        return replies


def _strategy(method: str, **extra):
    return strategies.make(method, model=task.Net(), input_shape=(1, 28, 28),
                           fraction_evaluate=0.0, min_evaluate_nodes=0, **extra)


def _payload(method: str, strategy) -> int:
    """Bytes of what `method` promises to send in a round-1 train reply."""
    n, dense = num_prunable(task.Net()), 4 * (6 + 16 + 120 + 84 + 10)  # biases
    if method == "hidenseek":
        return -(-strategy.signs.size // 8)
    if method == "ssfl":
        return 4 * strategy.keep + dense
    return -(-n // 8) if method in ("fedpm", "mpfl") else 4 * n + dense


@pytest.mark.integration  # a whole federated run, in-process
@pytest.mark.parametrize("method", METHODS)
def test_example_uplink_is_what_each_method_promises(method, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(client_app, "train_fn",
                        lambda *args: calls.append(args[2:4]) or task.train(*args))
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("fedmask's loop ran"))
    packed = {"mask_coding": "packed"} if method in ("hidenseek", "fedpm", "mpfl") else {}
    vote = {"density": 0.5, "prune_rate": 0.5} if method == "mpfl" else {}  # one vote round
    rounds = 2 if method == "mpfl" else 1  # MPFL refuses to end before it trains
    grid, strategy = ExampleGrid(), _strategy(method, **packed, **vote)  # promises: packed masks
    result = strategy.start(grid=grid, num_rounds=rounds,
                            train_config=ConfigRecord({"local-epochs": 1}))
    assert grid.errors == []
    # the project's loop, on both nodes, every round
    assert calls == [(1, strategy.method.defaults["lr"])] * 2 * rounds
    train = [(size, bound) for kind, size, bound in grid.sizes if kind == "train"][:2]
    payload = _payload(method, strategy)
    assert len(train) == 2
    assert all(payload <= size <= payload + bound for size, bound in train), (payload, train)
    # any strategy writes the model file in one call; it loads into the project's class
    strategy.save_model(tmp_path / "model.safetensors", result.arrays)
    x = torch.randn(3, 1, 28, 28)
    loaded = load_model(tmp_path / "model.safetensors", model=task.Net())
    assert torch.equal(loaded(x), strategy.global_model(result.arrays)(x))


@pytest.mark.integration  # a whole federated run, in-process
def test_the_example_answers_hidenseeks_class_report_on_the_voted_model():
    """``class-bias-report = "voted"`` through Flower's ``Strategy.start``: the
    example's query handler answers each round's report, and the offsets step."""
    grid = ExampleGrid()
    strategy = _strategy("hidenseek", class_bias_report="voted")
    result = strategy.start(grid=grid, num_rounds=2,
                            train_config=ConfigRecord({"local-epochs": 1}))
    assert grid.errors == []
    assert [kind for kind, _, _ in grid.sizes] == ["train", "train", "query", "query"] * 2
    assert np.abs(strategy.offset.bias).max() > 0
    bias = strategy.global_model(result.arrays).fc3.bias.detach().numpy()
    np.testing.assert_array_equal(bias, strategy.offset.bias)


@pytest.mark.integration  # a whole federated run, in-process
def test_a_node_that_loses_its_state_gets_the_mask_again():
    grid = ExampleGrid()
    strategy = strategies.make("ssfl", model=task.Net(), input_shape=(1, 28, 28),
                               fraction_evaluate=0.0, min_evaluate_nodes=0, min_train_nodes=1)
    arrays = strategy.prepare(grid, 60, None)
    config = strategy.default_config()
    valid = []
    for server_round in (1, 2, 3):
        if server_round == 2:
            grid.states[2] = RecordDict()  # node 2 restarted: a fresh context.state
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, config,
                                                                 grid))
        new, _ = strategy.aggregate_train(server_round, replies)
        assert new is not None  # no round without valid replies
        arrays = new
        valid.append(sum(not r.has_error() for r in replies))
    assert valid == [2, 1, 2]  # round 3: the mask went to node 2 again and it trained
    assert [node for node,
            _ in grid.errors] == [2] and "does not hold the mask" in grid.errors[0][1]
    assert np.isfinite(strategy.global_model(arrays)(torch.zeros(1, 1, 28, 28)).detach()).all()
