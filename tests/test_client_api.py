"""fedmask.client: the client side of every method around the user's own loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message.message import make_message
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

import fedmask.client
import strategies
from fedmask.client.app import client_app
from fedmask.methods import REGISTRY
from fedmask.nn.batches import as_pairs
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights
from fedmask.nn.supermask import FixedMask, attach, fold

from conftest import FakeGrid, _metadata

METHODS = list(REGISTRY)


class DictImages(Dataset):
    """64 random 1x12x12 images as Hugging Face style dict samples."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 1, 12, 12, generator=gen)
        self.y = torch.randint(0, 10, (64,), generator=gen)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        return {"img": self.x[i], "label": self.y[i]}


LOADER = DataLoader(DictImages(), batch_size=16)


def user_train(net, loader, epochs, lr, device):
    """A Flower user's loop: SGD with momentum and weight decay over net.parameters()."""
    net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    for _ in range(epochs):
        for batch in loader:
            opt.zero_grad()
            F.cross_entropy(net(batch["img"]), batch["label"]).backward()
            opt.step()
    return 0.5


def user_test(net, loader, device):
    """A Flower user's test: never calls .eval()."""
    correct = sum((net(b["img"]).argmax(1) == b["label"]).sum().item() for b in loader)
    return 1.0, correct / len(loader.dataset)


OWN = {"hidenseek": {"synflow_iterations": 3}, "fedsparsify": {"num_server_rounds": 3}}


def _strategy(method: str):
    return strategies.make(method, model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12),
                           seed=3, min_train_nodes=1, min_available_nodes=1,
                           min_evaluate_nodes=1, **OWN.get(method, {}))


def _message(strategy, kind: str = "train", node: int = 21) -> Message:
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    msg = list(configure(1, strategy.initial_arrays(), strategy.default_config(),
                         FakeGrid([node])))[0]
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def test_fixed_mask_all_ones_changes_nothing_and_pruned_entries_get_no_gradient():
    plain, masked = nn.Linear(6, 3, bias=False), nn.Linear(6, 3, bias=False)
    masked.load_state_dict(plain.state_dict())
    attach(masked, lambda n, w: FixedMask(w, torch.ones_like(w, dtype=torch.bool)), ["weight"],
           freeze=False)
    x = torch.randn(4, 6)
    assert torch.equal(plain(x), masked(x))
    keep = torch.rand(3, 6) > 0.5
    other = nn.Linear(6, 3, bias=False)
    attach(other, lambda n, w: FixedMask(w, keep), ["weight"], freeze=False)
    other(x).sum().backward()
    grad = other.parametrizations.weight.original.grad
    assert torch.equal(grad[~keep], torch.zeros_like(grad[~keep]))
    assert (grad[keep] != 0).any()


@pytest.mark.parametrize("method", METHODS)
def test_the_users_loop_trains_what_the_method_trains(method):
    strategy = _strategy(method)
    msg = _message(strategy)
    net = fedmask.client.train_module(msg, build_model("cnn", 10, 1, 12), RecordDict())
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    if method in ("hidenseek", "fedpm"):
        assert trainable and all(name.endswith(".scores") for name in trainable)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    user_train(net, LOADER, 1, 0.05, torch.device("cpu"))
    assert any(not torch.equal(before[n], p) for n, p in net.named_parameters() if n in before)
    reply = fedmask.client.train_reply(msg, net, 64, {"train_loss": 0.5})
    assert reply.content.metric_records["metrics"]["num-examples"] == 64
    new, _ = strategy.aggregate_train(1, [make_message(_metadata(21, "train"),
                                                       content=reply.content)])
    assert new is not None  # the strategy accepted what the user's loop produced


def test_pruned_weights_stay_zero_whatever_the_users_optimiser_does():
    strategy = _strategy("ssfl")
    mask = np.random.default_rng(0).random(strategy.mask.size) < 0.5
    strategy.mask, strategy.keep = mask, int(mask.sum())
    strategy.start_from_mask()
    net = fedmask.client.train_module(_message(strategy), build_model("cnn", 10, 1, 12),
                                      RecordDict())
    user_train(net, LOADER, 2, 0.05, torch.device("cpu"))  # momentum and weight decay
    weights = flat_weights(fold(net))
    assert (weights[~mask] == 0).all()
    assert (weights[mask] != 0).mean() > 0.99


def test_train_reply_refuses_a_module_it_did_not_make():
    msg = _message(_strategy("hidenseek"))
    with pytest.raises(ValueError, match="model"):
        fedmask.client.train_reply(msg, build_model("cnn", 10, 1, 12), 10)


@pytest.mark.parametrize("method", METHODS)
def test_eval_module_is_a_plain_module_of_the_users_class(method):
    strategy = _strategy(method)
    msg = _message(strategy, "evaluate")
    net = fedmask.client.eval_module(msg, build_model("cnn", 10, 1, 12), RecordDict())
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert not net.training
    fresh = build_model("cnn", 10, 1, 12)
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 12, 12)
    reference = strategy.evaluation_model(strategy.initial_arrays()).eval()
    assert torch.allclose(fresh.eval()(x), reference(x))


def test_method_of_reads_the_message_and_refuses_a_foreign_one():
    msg = _message(_strategy("fedpm"))
    assert fedmask.client.method_of(msg).name == "fedpm"
    plain = Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord()}),
                    dst_node_id=1, message_type="train")
    assert fedmask.client.method_of(plain).name == "fedavg"  # Flower's own FedAvg
    with pytest.raises(ValueError, match="fedmask-method"):
        fedmask.client.method_of(Message(RecordDict({"config": ConfigRecord()}),
                                         dst_node_id=1, message_type="train"))


def test_as_pairs_reads_tuples_dicts_and_named_keys():
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert list(as_pairs([(x, y)]))[0][1] is y
    assert list(as_pairs([{"image": x, "labels": y}]))[0][0] is x
    assert list(as_pairs([{"pix": x, "cls": y}], "pix", "cls"))[0] == (x, y)
    with pytest.raises(KeyError, match="image"):
        list(as_pairs([{"pix": x, "label": y}]))


def test_client_app_factory_runs_the_users_functions_for_every_message_kind():
    calls = []

    def train(net, loader, epochs, lr, device):
        calls.append(("train", epochs, lr, str(device)))
        return user_train(net, loader, epochs, lr, device)

    app = client_app(model=lambda: build_model("cnn", 10, 1, 12),
                     load_data=lambda context: (LOADER, LOADER), train=train, test=user_test,
                     device="cpu")
    context = Context(1, 21, {}, RecordDict(), {"local-epochs": 6})
    hidenseek = _strategy("hidenseek")
    reply = app(_message(hidenseek), context)
    assert not reply.has_error(), reply.error
    assert calls == [("train", 6, 0.01, "cpu")]  # run config's epochs (> 20 steps), the lr
    evaluated = app(_message(hidenseek, "evaluate"), context)
    metrics = evaluated.content.metric_records["metrics"]
    assert {"accuracy", "loss", "personal-accuracy", "num-examples"} <= set(metrics)
    assert calls[1] == ("train", 1, 0.005, "cpu")  # personal fine-tuning at personal-lr
    ssfl = _strategy("ssfl")
    config = ssfl.with_method(ConfigRecord(
        {"saliency-batches": 1, "saliency-format": "float16", "num-params": ssfl.mask.size}))
    ssfl.net.to_config(config)
    query = Message(RecordDict({"config": config}), dst_node_id=21, message_type="query")
    answered = app(query, context)
    assert not answered.has_error(), answered.error
    assert "saliency" in answered.content.array_records


def test_query_reply_is_the_same_for_dict_and_tuple_batches():
    strategy = _strategy("ssfl")
    config = strategy.with_method(ConfigRecord({"saliency-batches": 2, "saliency-format":
                                                "float32", "num-params": strategy.mask.size}))
    strategy.net.to_config(config)
    msg = Message(RecordDict({"config": config}), dst_node_id=21, message_type="query")
    pairs = [(b["img"], b["label"]) for b in LOADER]
    from_dicts = fedmask.client.query_reply(msg, build_model("cnn", 10, 1, 12), LOADER,
                                            RecordDict())
    from_tuples = fedmask.client.query_reply(msg, build_model("cnn", 10, 1, 12), pairs,
                                             RecordDict(), num_examples=64)
    a = from_dicts.content.array_records["saliency"]["snip"].numpy()
    b = from_tuples.content.array_records["saliency"]["snip"].numpy()
    assert (a == b).all()


def test_client_app_factory_rounds_min_local_steps_up_to_whole_epochs():
    epochs = []

    def train(net, loader, n, lr, device):
        epochs.append(n)

    app = client_app(model=lambda: build_model("cnn", 10, 1, 12),
                     load_data=lambda context: (LOADER, LOADER), train=train,
                     test=user_test, device="cpu")
    msg = _message(_strategy("fedavg"))
    for min_steps in (0, 4, 5, 9):  # LOADER: 4 batches an epoch
        msg.content.config_records["config"]["min-local-steps"] = min_steps
        app(msg, Context(1, 21, {}, RecordDict(), {}))
    assert epochs == [1, 1, 2, 3]
